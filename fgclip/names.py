"""Names the command lines need to build their parsers, kept free of torch so that ``--help`` and
argument errors come at once (the model types are the families of :mod:`fgclip.families`)."""

EVAL_TASKS = ("fgovd", "boxcls", "retrieval", "zeroshot", "matching")
