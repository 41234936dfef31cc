"""Official LLaVA-1.5 layout in and out (``mllm.convert``), LLaVA's loss and generation vocabulary,
checked against values printed by haotian-liu/LLaVA at commit c121f04.

How the recorded values were made (``tests/data/mllm/llava_c121f04_convert.json``). In this project's
environment, :func:`mllm.testing.build_reference_llava` built the tiny model below (tiny FG-CLIP tower,
2-layer Llama with the sentencepiece tokenizer ``tests/data/mllm/vicuna``, every weight from
:func:`mllm.testing.values_from_name`, so any machine rebuilds it bit for bit); ``mllm.save_llava``
saved it, ``python -m mllm.convert to-llava`` converted it to ``llava-tiny/`` and
:func:`mllm.testing.save_reference_language_model` wrote its language model alone (``lm/``, the
``model_base``). Then, in a separate environment with LLaVA's pins (torch 2.14.1, transformers 4.37.2,
tokenizers 0.15.1, sentencepiece 0.1.99, accelerate 0.21.0, peft 0.8.2) and LLaVA's source on
PYTHONPATH, a script (kept outside the repository):

* loaded ``llava-tiny`` with ``llava.model.builder.load_pretrained_model`` (``torch.float16`` read as
  float32 inside ``llava.model.builder`` only), built the vicuna_v1 prompt for "<image>\\nWhat color is
  it?" with ``tokenizer_image_token``, the pixels of :func:`mllm.testing.reference_image` with
  ``process_images`` (``image_aspect_ratio`` pad), and printed the prompt ids, the logits at the first
  token after the image and at the last token, and ``generate`` (greedy, 8 new tokens);
* formatted one two-round record with ``llava.train.train.preprocess_multimodal`` and ``preprocess``
  (``v1``) and printed ``input_ids``, ``labels`` and the model's training loss;
* saved the loaded model with ``save_pretrained`` and printed its config and tensor names and shapes
  ("full_saved"): the layout of LLaVA's own full checkpoints, tower weights included;
* built a LoRA checkpoint as ``llava/train/train.py`` does with ``lora_enable`` (peft ``LoraConfig``
  r 4, alpha 8 on ``find_all_linear_names`` before the tower is built, the projector trainable,
  ``get_peft_state_maybe_zero_3`` / ``get_peft_state_non_lora_maybe_zero_3``, ``config.save_pretrained``,
  ``save_pretrained(state_dict=...)``, ``non_lora_trainables.bin``), LoRA and projector tensors set
  to ``values_from_name(saved name, seed=1)``, and loaded it with ``model_base=lm``;
* saved a stage-1 output as ``train.py`` does with ``tune_mm_mlp_adapter`` (``config.json`` with
  ``image_aspect_ratio`` square, ``mm_projector.bin`` from ``get_mm_adapter_state_maybe_zero_3``),
  projector tensors ``values_from_name(name, seed=2)``, and loaded it with ``model_base=lm``.

The tests rebuild the same directories here (the LoRA and stage-1 ones by writing the recorded file
layout with the same tensor values) and compare with those numbers.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mllm import load_llava, save_llava
from mllm.convert import from_llava, main as convert_main, save_converted, to_llava
from mllm.data import IGNORE_INDEX, ConversationCollator, ConversationDataset, encode_text
from mllm.testing import build_reference_llava, reference_image, save_reference_language_model, values_from_name
from numerics import assert_close_to_reference, tower_terms

from fgclip.errors import run_command

DATA = Path(__file__).resolve().parent / "data" / "mllm"
VICUNA = DATA / "vicuna"
OFFICIAL = json.loads((DATA / "llava_c121f04_convert.json").read_text())
IMAGE_SLOT = -200


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    model, processor = build_reference_llava(root / "build", VICUNA)
    save_llava(model, processor, root / "ours")
    to_llava(root / "ours", root / "llava-tiny")
    save_reference_language_model(model, root / "lm", VICUNA)
    reference_image().save(root / "reference.png")
    return root


def collapsed(ids, image_token_id):
    """Our prompt ids with each run of image placeholders written as LLaVA's one -200."""
    out = []
    for token in ids:
        if token != image_token_id:
            out.append(token)
        elif not out or out[-1] != IMAGE_SLOT:
            out.append(IMAGE_SLOT)
    return out


@torch.no_grad()
def assert_matches_official(directory, case):
    """Prompt ids, logits (at LLaVA's two recorded positions) and greedy tokens of our model in
    ``directory`` against what LLaVA printed for ``case``."""
    model, processor = load_llava(directory)
    model.eval()
    official = OFFICIAL["cases"][case]
    input_ids, _ = encode_text(processor.tokenizer, OFFICIAL["prompt"], [], model.config.image_seq_length, None, "")
    assert collapsed(input_ids.tolist(), model.config.image_token_id) == OFFICIAL["input_ids"]
    batch = {"input_ids": input_ids[None], "attention_mask": torch.ones_like(input_ids)[None],
             "pixel_values": processor.image_processor(reference_image(), return_tensors="pt")["pixel_values"]}
    logits = model(**batch).logits[0]
    terms = (tower_terms(model.config.vision_config, model.config.image_seq_length + 1)
             + tower_terms(model.config.text_config, logits.shape[0]))
    columns = len(official["logits"][0])
    for position, expected in zip(official["positions"], official["logits"]):
        assert_close_to_reference(logits[position, :columns], torch.tensor(expected), terms=terms,
                                  msg=f"{case}: logits at {position}")
    generated = model.generate(**batch, max_new_tokens=len(official["generated"]), do_sample=False)
    assert generated[0, input_ids.shape[0]:].tolist() == official["generated"]
    return model


# ---------------------------------------------------------------- ours -> LLaVA
def test_llava_opens_our_converted_directory_and_gives_our_logits(reference):
    """load_pretrained_model on ``to-llava``'s output gave these logits and tokens; ours give the same."""
    assert_matches_official(reference / "ours", "full")


def test_to_llava_writes_what_llavas_own_save_writes(reference):
    """Tensor names and shapes equal those of LLaVA's ``save_pretrained`` of the loaded model (tower
    included, no ``<image>`` row), and every LLaVA field of its config.json has LLaVA's value."""
    converted = load_file(reference / "llava-tiny" / "model.safetensors")
    assert {key: list(value.shape) for key, value in converted.items()} == OFFICIAL["full_saved"]["tensors"]
    ours = json.loads((reference / "llava-tiny" / "config.json").read_text())
    theirs = OFFICIAL["full_saved"]["config"]
    assert ours["mm_vision_tower"] == str((reference / "llava-tiny" / "vision_tower").resolve())
    for key in set(ours) & set(theirs) - {"mm_vision_tower", "_name_or_path"}:
        assert ours[key] == theirs[key], key
    assert {"mm_use_im_patch_token", "mm_projector_type", "image_aspect_ratio", "mm_vision_select_layer"} <= set(ours)
    assert (reference / "llava-tiny" / "tokenizer.model").is_file()
    assert json.loads((reference / "llava-tiny" / "tokenizer_config.json").read_text())["legacy"] is False


def architecture(config):
    """A config's fields without the bookkeeping ones (class names, paths, dtypes)."""
    def strip(fields):
        return {key: strip(value) if isinstance(value, dict) else value for key, value in fields.items()
                if key not in ("architectures", "_name_or_path", "transformers_version")}
    return strip(config.to_dict())


def test_to_llava_then_from_llava_gives_back_the_original_exactly(reference, tmp_path):
    save_converted(*from_llava(reference / "llava-tiny"), tmp_path / "back")
    original, processor = load_llava(reference / "ours")
    back, back_processor = load_llava(tmp_path / "back")
    before, after = original.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert architecture(back.config) == architecture(original.config)
    text = OFFICIAL["prompt"]
    assert back_processor.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    assert back_processor.tokenizer.legacy is processor.tokenizer.legacy is False
    assert back_processor.image_processor.do_pad and back.generation_config.suppress_tokens == [450]


# ---------------------------------------------------------------- LLaVA -> ours
def official_names(weights):
    """Our state dict under the names of LLaVA's saved checkpoints (written out here, independently
    of mllm.convert, from the recorded names)."""
    out = {}
    for key, value in weights.items():
        if key.startswith("model.vision_tower."):
            rest = key[len("model.vision_tower."):]
            rest = rest if rest.startswith("vision_model.") else "vision_model." + rest
            out["model.vision_tower.vision_tower." + rest] = value
        elif key.startswith("model.multi_modal_projector.linear_"):
            index = {"1": "0", "2": "2"}[key[len("model.multi_modal_projector.linear_")]]
            out["model.mm_projector." + index + key[len("model.multi_modal_projector.linear_1"):]] = value
        elif key.startswith("model.language_model."):
            out["model." + key[len("model.language_model."):]] = value
        else:
            out[key] = value
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        out[key] = out[key][:450].clone()
    return out


def write_config(path, recorded, reference):
    text = json.dumps(recorded).replace("{vision_tower}", str(reference / "llava-tiny" / "vision_tower"))
    path.write_text(text.replace("{llava_tiny}", str(reference / "llava-tiny")))


def test_from_llava_reads_a_checkpoint_in_the_layout_llava_saves(reference, tmp_path):
    source = tmp_path / "llava-tiny-saved"
    source.mkdir()
    model, _ = load_llava(reference / "ours")
    weights = official_names(model.state_dict())
    assert {key: list(value.shape) for key, value in weights.items()} == OFFICIAL["full_saved"]["tensors"]
    save_file({key: value.contiguous() for key, value in weights.items()}, source / "model.safetensors",
              metadata={"format": "pt"})
    write_config(source / "config.json", OFFICIAL["full_saved"]["config"], reference)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(reference / "llava-tiny" / name, source / name)
    save_converted(*from_llava(source), tmp_path / "ours")
    assert_matches_official(tmp_path / "ours", "full")


def test_from_llava_reads_the_released_checkpoints_file_layout(reference, tmp_path, caplog):
    """As liuhaotian/llava-v1.5-7b is stored: float16 ``pytorch_model-0000k-of-00002.bin`` shards with
    their index, ``model_type: llava`` (older LLaVA), rotary ``inv_freq`` buffers saved by older
    transformers. The weights keep float16 unless ``--dtype`` says otherwise."""
    source = tmp_path / "llava-v1.5-tiny"
    source.mkdir()
    model, _ = load_llava(reference / "ours")
    weights = {key: value.half() for key, value in official_names(model.state_dict()).items()}
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    keys = sorted(weights)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        torch.save({key: weights[key] for key in shard_keys}, source / name)
    index = {"metadata": {}, "weight_map": {key: name for name, shard_keys in shards.items() for key in shard_keys}}
    (source / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    config = dict(OFFICIAL["full_saved"]["config"], model_type="llava", torch_dtype="float16")
    write_config(source / "config.json", config, reference)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(reference / "llava-tiny" / name, source / name)
    converted, config, _, processor = from_llava(source)
    assert "differ" not in caplog.text  # its float16 tower copy is the tower rounded, as in the release
    expected = {key: value.half() for key, value in model.state_dict().items()}
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[key], expected[key]) for key in expected)
    assert processor.image_processor.do_pad and config.image_token_id == 450
    assert {value.dtype for value in from_llava(source, dtype=torch.float32)[0].values()} == {torch.float32}


def test_from_llava_merges_a_lora_checkpoint_as_llava_saves_it(reference, tmp_path):
    recorded = OFFICIAL["lora_saved"]
    source = tmp_path / "llava-tiny-lora"
    source.mkdir()
    write_config(source / "config.json", recorded["config"], reference)
    write_config(source / "adapter_config.json", recorded["adapter_config"], reference)
    adapter = {key: values_from_name(key, tuple(shape), seed=1) for key, shape in recorded["adapter"].items()}
    save_file(adapter, source / recorded["adapter_file"], metadata={"format": "pt"})
    torch.save({key: values_from_name(key, tuple(shape), seed=1)
                for key, shape in recorded["non_lora_trainables"].items()}, source / "non_lora_trainables.bin")
    save_converted(*from_llava(source, model_base=reference / "lm"), tmp_path / "ours")
    assert_matches_official(tmp_path / "ours", "lora")


def write_stage1(reference, directory):
    recorded = OFFICIAL["projector_saved"]
    directory.mkdir()
    write_config(directory / "config.json", recorded["config"], reference)
    torch.save({key: values_from_name(key, tuple(shape), seed=2) for key, shape in recorded["mm_projector"].items()},
               directory / "mm_projector.bin")
    return directory


def test_from_llava_reads_a_stage1_projector_with_its_base(reference, tmp_path):
    source = write_stage1(reference, tmp_path / "llava-tiny-pretrain")
    save_converted(*from_llava(source, model_base=reference / "lm"), tmp_path / "ours")
    model = assert_matches_official(tmp_path / "ours", "projector")
    _, processor = load_llava(tmp_path / "ours")
    assert not processor.image_processor.do_pad  # image_aspect_ratio square: resize and centre crop
    # the file alone, with the tower named on the command line, gives the same model
    alone = tmp_path / "alone" / "mm_projector.bin"
    alone.parent.mkdir()
    shutil.copyfile(source / "mm_projector.bin", alone)
    weights, *_ = from_llava(alone, model_base=reference / "lm",
                             vision_tower=str(reference / "llava-tiny" / "vision_tower"))
    assert all(torch.equal(weights[key], value) for key, value in model.state_dict().items())


def run_convert(argv, capsys):
    status = run_command(convert_main, [str(argument) for argument in argv])
    return status, capsys.readouterr().err.strip()


def test_bad_inputs_are_one_line_errors(reference, tmp_path, capsys):
    stage1 = write_stage1(reference, tmp_path / "llava-stage1")
    status, error = run_convert(["from-llava", stage1, tmp_path / "out"], capsys)
    assert status == 2 and error == (f"error: {stage1}: a stage-1 mm_projector.bin: pass --model-base, the language "
                                     "model it was trained from (LLaVA's model_base)")
    status, error = run_convert(["to-llava", reference / "ours", tmp_path / "converted"], capsys)
    assert status == 2 and "must contain 'llava'" in error and error.count("\n") == 0
    status, error = run_convert(["to-llava", reference / "ours", tmp_path / "llava-v1.5-lora"], capsys)
    assert status == 2 and "reads as a LoRA checkpoint" in error
    broken = tmp_path / "broken" / "mm_projector.bin"
    broken.parent.mkdir()
    broken.write_bytes(b"PK\x03\x04 not a zip")
    status, error = run_convert(["from-llava", broken, tmp_path / "out", "--model-base", reference / "lm"], capsys)
    assert status == 2 and error.startswith(f"error: {broken}: truncated or corrupt checkpoint")
    foreign = tmp_path / "foreign.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(2, 2)}, foreign)
    status, error = run_convert(["from-llava", foreign, tmp_path / "out", "--model-base", reference / "lm",
                                 "--vision-tower", reference / "llava-tiny" / "vision_tower"], capsys)
    assert status == 2 and "expected the mlp2x_gelu projector tensors" in error
    no_sentencepiece = tmp_path / "no-sp"
    shutil.copytree(reference / "ours", no_sentencepiece)
    (no_sentencepiece / "tokenizer.model").unlink()
    status, error = run_convert(["to-llava", no_sentencepiece, tmp_path / "llava-x"], capsys)
    assert status == 2 and "pass --tokenizer" in error


# ---------------------------------------------------------------- loss and generation vocabulary
def test_training_loss_is_llavas_over_the_language_model_vocabulary(reference, tmp_path):
    """LLaVA formatted the record into these ids and labels and computed this loss; our dataset and
    model give the same. Over all 451 columns (the <image> row as a class) the loss would differ."""
    model, processor = load_llava(reference / "ours")
    recorded = OFFICIAL["loss"]
    record = {"id": "loss", "image": "reference.png", "conversations": recorded["conversations"]}
    (tmp_path / "record.json").write_text(json.dumps([record]))
    dataset = ConversationDataset(tmp_path / "record.json", processor.tokenizer, processor.image_processor,
                                  model.config.image_seq_length, reference, "v1")
    item = dataset[0]
    assert collapsed(item["input_ids"].tolist(), model.config.image_token_id) == recorded["input_ids"]
    image_at = recorded["input_ids"].index(IMAGE_SLOT)
    expanded = (recorded["labels"][:image_at] + [IGNORE_INDEX] * model.config.image_seq_length
                + recorded["labels"][image_at + 1:])
    assert item["labels"].tolist() == expanded
    batch = ConversationCollator(processor.tokenizer.pad_token_id)([item])
    output = model(**batch)
    assert abs(output.loss.item() - recorded["loss"]) <= 1e-6 * recorded["loss"]
    every_column = torch.nn.functional.cross_entropy(output.logits[0, :-1], batch["labels"][0, 1:])
    assert abs(every_column.item() - recorded["loss"]) > 10e-6 * recorded["loss"]
    output.loss.backward()
    image_row = model.config.image_token_id
    assert not model.lm_head.weight.grad[image_row].any() and model.lm_head.weight.grad[:image_row].any()


def test_generation_never_emits_the_image_token_also_after_save_and_plain_loading(reference, tmp_path):
    model, processor = load_llava(reference / "ours")
    with torch.no_grad():
        model.lm_head.weight[model.config.image_token_id] = 100 * model.lm_head.weight[:450].abs().max(dim=0).values
    save_llava(model, processor, tmp_path / "saved")
    from transformers import LlavaForConditionalGeneration

    plain = LlavaForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    assert plain.generation_config.suppress_tokens == [model.config.image_token_id]
    input_ids, _ = encode_text(processor.tokenizer, OFFICIAL["prompt"], [], 16, None, "")
    batch = {"input_ids": input_ids[None], "attention_mask": torch.ones_like(input_ids)[None],
             "pixel_values": processor.image_processor(reference_image(), return_tensors="pt")["pixel_values"]}
    with torch.no_grad():
        assert plain(**batch).logits[0, -1].argmax() == model.config.image_token_id  # the row would win
        generated = plain.generate(**batch, max_new_tokens=4, do_sample=False)[0, input_ids.shape[0]:]
    assert model.config.image_token_id not in generated.tolist() and len(generated) == 4


def test_cli_round_trip(reference, tmp_path):
    assert run_command(convert_main, ["to-llava", str(reference / "ours"), str(tmp_path / "llava-cli")]) == 0
    assert run_command(convert_main, ["from-llava", str(tmp_path / "llava-cli"), str(tmp_path / "back")]) == 0
    before, after = load_llava(reference / "ours")[0].state_dict(), load_llava(tmp_path / "back")[0].state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
