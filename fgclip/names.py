"""Names the command lines need to build their parsers, kept free of torch so that ``--help`` and
argument errors come at once."""

MODEL_TYPES = ("auto", "fgclip", "fgclip2", "clip")
EVAL_TASKS = ("fgovd", "boxcls", "retrieval", "zeroshot", "matching")
