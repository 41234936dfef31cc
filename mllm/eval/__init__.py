"""Evaluation of LLaVA models: batched greedy answers over a question file, and scorers that
give the numbers of the official scripts (LLaVA's POPE and GQA scripts, VLMEvalKit's MMBench
matching, lmms-eval's RefCOCO REC).

Question and answer files use LLaVA's layouts: a question is ``{"question_id", "image", "text",
...}`` per line, an answer ``{"question_id", "prompt", "text", "answer_id", "model_id",
"metadata"}``. ``mllm.eval.generate`` writes answers; each benchmark module (``gqa``, ``pope``,
``refcoco``, ``mmbench``) builds a question file from the benchmark's own files and scores an
answer file, LLaVA's or ours.
"""
