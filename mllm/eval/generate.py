"""Batched greedy answers of a LLaVA model over a question file.

    python -m mllm.eval.generate --model MODEL_DIR --questions questions.jsonl \\
        --image-folder IMAGES --answers answers.jsonl [--batch-size 16 --max-new-tokens 128]

Each question is wrapped in the training prompt format (``v1`` by default); a question with
an ``image`` gets ``<image>\\n`` in front of its text, as in training. Prompts are left-padded
into batches; decoding is greedy (``do_sample=False``, one beam). Answers are written in
LLaVA's layout, one ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``
per question, so LLaVA's scripts read them as they read LLaVA's own.
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid

import torch
from tqdm import tqdm
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from fgclip.errors import CommandParser, command, outside_root_reason

from ..builder import load_llava
from ..data import encode_text, get_format, open_image, with_image_first
from .jsonl import InputError, read_jsonl, write_jsonl

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def left_pad(sequences: list[torch.Tensor], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and attention mask with every sequence right-aligned."""
    length = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, length - len(sequence) :] = sequence
        attention_mask[row, length - len(sequence) :] = 1
    return input_ids, attention_mask


def check_questions(questions: list[tuple[int, dict]], source: str, image_folder: str | os.PathLike = "",
                    allow_outside_root: bool = False) -> None:
    """Every question has a string ``text`` and, if it names one, an image file under ``image_folder``
    (absolute paths and ``..`` only with ``allow_outside_root``): checked before the model loads."""
    for line, question in questions:
        if not isinstance(question.get("text"), str):
            raise InputError(source, "field 'text' must be a string", line)
        image = question.get("image")
        if not image:
            continue
        if not isinstance(image, str):
            raise InputError(source, f"image: expected a path, got {image!r}", line)
        reason = None if allow_outside_root else outside_root_reason(image)
        if reason:
            raise InputError(source, f"image: {reason}", line)
        if not os.path.isfile(os.path.join(image_folder, image)):
            raise InputError(source, f"image file not found: {os.path.join(image_folder, image)}", line)


@torch.no_grad()
def generate_answers(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    questions: list[dict],
    image_folder: str | os.PathLike = "",
    conversation_format: str = "v1",
    batch_size: int = 8,
    max_new_tokens: int = 128,
    model_id: str = "",
    source: str = "questions",
) -> list[dict]:
    """Greedy answers in LLaVA's answer layout, one per question, in question order."""
    prompt_format = get_format(conversation_format)
    tokenizer = processor.tokenizer
    device, dtype = model.device, next(model.model.vision_tower.parameters()).dtype
    model.eval()
    answers = []
    for start in tqdm(range(0, len(questions), batch_size), desc="generate", disable=len(questions) <= batch_size):
        batch = questions[start : start + batch_size]
        sequences, images = [], []
        for offset, question in enumerate(batch):
            where = f"{source}: question {start + offset} (question_id {question.get('question_id')!r})"
            if not isinstance(question.get("text"), str):
                raise ValueError(f"{where}: field 'text' must be a string")
            text = question["text"]
            if question.get("image"):
                images.append(open_image(os.path.join(image_folder, question["image"]), where))
                text = with_image_first(text)
            prompt = prompt_format.prompt(text)
            input_ids, _ = encode_text(tokenizer, prompt, [], model.config.image_seq_length, None, where)
            sequences.append(input_ids)
        input_ids, attention_mask = left_pad(sequences, tokenizer.pad_token_id)
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        if images:
            pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            inputs["pixel_values"] = pixel_values.to(device, dtype)
        output = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
        for question, text in zip(batch, texts):
            answers.append({
                "question_id": question["question_id"], "prompt": question["text"], "text": text.strip(),
                "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {},
            })
    return answers


@command
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="assembled LLaVA directory (training or merge output)")
    parser.add_argument("--questions", required=True, help="question JSONL")
    parser.add_argument("--answers", required=True, help="output answer JSONL")
    parser.add_argument("--image-folder", default="")
    parser.add_argument("--conversation-format", default="v1", choices=["plain", "v1"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept question image paths that are absolute or leave --image-folder")
    args = parser.parse_args(argv)
    run(args)
    return 0


def run(args: argparse.Namespace) -> None:
    numbered = read_jsonl(args.questions)
    check_questions(numbered, args.questions, args.image_folder, args.allow_outside_root)
    questions = [question for _, question in numbered]
    model, processor = load_llava(args.model, dtype=DTYPES[args.dtype])
    model.to(args.device)
    answers = generate_answers(
        model, processor, questions, args.image_folder, args.conversation_format, args.batch_size,
        args.max_new_tokens, model_id=os.path.basename(os.path.normpath(args.model)), source=args.questions,
    )
    write_jsonl(answers, args.answers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
