"""Results rows -> DataFrame, paper tables."""
