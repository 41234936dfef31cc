"""Evaluation of LLaVA models: batched greedy answers over a question file, and scorers.

Question files are JSON lines, one question per line::

    {"question_id": "...", "image": "relative/path.jpg", "text": "question", ...ground truth...}

``mllm.eval.generate`` writes answers as ``{"question_id", "prompt", "text", "model_id"}``;
each benchmark module (``gqa``, ``pope``, ``refcoco``, ``mmbench``) builds its question file
from the benchmark's own annotation files (keeping the ground truth in each question) and
scores an answer file against it.
"""
