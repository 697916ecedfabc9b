"""Results rows -> DataFrame (``rows``), per-layer measurements (``layers``), paper tables
(``tables``: mean ± std over seeds, paired gains with 95 % intervals) and figures (``plots``)."""
