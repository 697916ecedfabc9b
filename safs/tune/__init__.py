"""Everything that speaks Ray Tune: one Tune experiment per stage attempt
(:mod:`safs.tune.experiment`), the adapter that lets any ask/tell optimizer drive Tune
(:mod:`safs.tune.searcher`), and the reader of Tune's trial directories
(:mod:`safs.tune.trials`). Importing this package imports no Ray; its modules do, lazily
where a command must stay fast."""
