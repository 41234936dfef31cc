"""LLaVA with an FG-CLIP tower (mllm/): assembly, preprocessing, data, training stages, LoRA merge
and generation, on a tiny Llama and a tiny FG-CLIP saved to temporary directories."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from fgclip import FGCLIPModel
from mllm import LanguageModelLoss, build_llava, load_llava, prepare_tokenizer, save_llava
from mllm.data import (
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    ConversationCollator,
    ConversationDataset,
    RecordError,
    encode_text,
    modality_grouped_indices,
)
from mllm.eval.generate import generate_answers
from mllm.merge_lora import merge_lora
from mllm.testing import save_tiny_fgclip, save_tiny_llama, tiny_llama_tokenizer, write_conversations
from mllm.train import LlavaTrainer, LlavaTrainingArguments, find_llava
from mllm.train import main as train_main
from numerics import assert_close_to_reference, tower_terms

PATCH_TOKENS = 16  # tiny FG-CLIP: 32 px images, 8 px patches
MLLM_DIR = Path(__file__).resolve().parents[1] / "mllm"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    lm, fgclip = save_tiny_llama(root / "lm"), save_tiny_fgclip(root / "fgclip")
    pretrain_json, finetune_json = write_conversations(root / "data")
    return {"lm": lm, "fgclip": fgclip, "pretrain": pretrain_json, "finetune": finetune_json,
            "images": root / "data" / "images", "root": root}


@pytest.fixture(scope="module")
def llava(sources):
    torch.manual_seed(0)
    return build_llava(sources["lm"], sources["fgclip"])


def common_train_args(output_dir, steps=3):
    return ["--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--max_steps", str(steps),
            "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--logging_steps", "1",
            "--disable_tqdm", "true", "--dataloader_num_workers", "0"]


def state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# ---------------------------------------------------------------- model and processor
def test_image_features_are_projected_penultimate_patch_tokens(llava, sources):
    """Llava's image features = mlp2x_gelu(penultimate FG-CLIP layer without CLS), written out by hand."""
    model, _ = llava
    fgclip = FGCLIPModel.from_pretrained(sources["fgclip"]).eval()
    pixels = torch.randn(2, 3, 32, 32)
    vision = fgclip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixels))
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, None)
    patches = hidden[:, 1:]
    projector = model.model.multi_modal_projector
    expected = F.linear(F.gelu(F.linear(patches, projector.linear_1.weight, projector.linear_1.bias)),
                        projector.linear_2.weight, projector.linear_2.bias)
    with torch.no_grad():
        features = torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)
    assert features.shape == (2, PATCH_TOKENS, 32)
    vision_config = fgclip.config.vision_config
    terms = tower_terms(vision_config, PATCH_TOKENS + 1) + vision_config.hidden_size + 2 * projector.linear_2.in_features
    assert_close_to_reference(features, expected, terms=terms)
    assert type(model.model.vision_tower) is CLIPVisionModel
    assert model.config.image_seq_length == PATCH_TOKENS
    tokenizer = llava[1].tokenizer
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == len(tiny_llama_tokenizer())
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_processor_pads_to_a_square_with_the_mean_colour(llava):
    """A 40x20 red image: rows above and below are the mean colour int(255 * mean) (LLaVA's fill)."""
    processor = llava[1]
    pixels = processor.image_processor(Image.new("RGB", (40, 20), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    mean = torch.tensor(processor.image_processor.image_mean)
    std = torch.tensor(processor.image_processor.image_std)
    fill = (torch.tensor([int(255 * m) for m in mean.tolist()]) / 255 - mean) / std
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, :, 0, 16], fill, atol=1e-3, rtol=0)
    torch.testing.assert_close(pixels[0, :, 31, 16], fill, atol=1e-3, rtol=0)
    torch.testing.assert_close(pixels[0, :, 16, 16], red, atol=1e-3, rtol=0)


def test_saved_model_reloads_from_a_fresh_directory_without_its_sources(tmp_path):
    lm, fgclip = save_tiny_llama(tmp_path / "lm"), save_tiny_fgclip(tmp_path / "fgclip")
    model, processor = build_llava(lm, fgclip)
    save_llava(model, processor, tmp_path / "saved")
    shutil.rmtree(lm)
    shutil.rmtree(fgclip)
    shutil.move(tmp_path / "saved", tmp_path / "moved")
    config = json.loads((tmp_path / "moved" / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    reloaded, reloaded_processor = load_llava(tmp_path / "moved")
    before, after = model.state_dict(), reloaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert reloaded_processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert reloaded_processor.image_processor.do_pad


# ---------------------------------------------------------------- data
def test_directory_saved_with_the_pre_0_2_tower_type_still_loads(llava, tmp_path):
    model, processor = llava
    save_llava(model, processor, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"].update(model_type="fgclip_vision_tower", source_checkpoint="checkpoints/fg-clip")
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded, _ = load_llava(tmp_path)
    assert type(reloaded.model.vision_tower) is CLIPVisionModel
    before, after = model.state_dict(), reloaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)


PLAIN_TRANSFORMERS = """
import json, sys


class WithoutThisProject:
    \"\"\"Makes this checkout's packages unimportable: a Python that has transformers and not fgclip.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fgclip", "mllm", "detection"):
            raise ImportError(f"{name} is not installed here")


sys.meta_path.insert(0, WithoutThisProject())
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

directory, image, prompt = sys.argv[1:4]
processor = AutoProcessor.from_pretrained(directory)
model = LlavaForConditionalGeneration.from_pretrained(directory).eval()
batch = processor(images=Image.open(image), text=prompt, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
print(json.dumps({"input_ids": batch["input_ids"].tolist(), "pixel_values": batch["pixel_values"].tolist(),
                  "logits": logits.tolist(), "generated": generated.tolist()}))
"""


@torch.no_grad()
def test_saved_directory_opens_in_plain_transformers(llava, tmp_path):
    """A saved directory is a plain llava-hf one: transformers alone (this checkout unimportable) loads the
    model and the processor and gives our ids, pixels, logits and greedy tokens. The image is already at the
    tower's width, so the padded square needs no resize (PIL and torchvision resize differently)."""
    model, processor = llava
    save_llava(model, processor, tmp_path / "llava")
    Image.new("RGB", (32, 24), (200, 40, 40)).save(tmp_path / "red.png")
    prompt = f"{VICUNA_SYSTEM} USER: <image>\nWhat color is it? ASSISTANT:"
    result = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(tmp_path / "llava"),
                             str(tmp_path / "red.png"), prompt], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    ours, our_processor = load_llava(tmp_path / "llava")
    batch = our_processor(images=Image.open(tmp_path / "red.png"), text=prompt, return_tensors="pt")
    assert batch["input_ids"].tolist() == plain["input_ids"]
    # torchvision's backend rescales and normalises in one fused step: pixels within its 3 roundings
    assert_close_to_reference(torch.tensor(plain["pixel_values"]), batch["pixel_values"], terms=3)
    tokens = batch["input_ids"].shape[1]
    terms = tower_terms(ours.config.vision_config, PATCH_TOKENS + 1) + tower_terms(ours.config.text_config, tokens)
    assert_close_to_reference(torch.tensor(plain["logits"]), ours(**batch).logits, terms=terms)
    assert ours.generate(**batch, max_new_tokens=6, do_sample=False).tolist() == plain["generated"]


def test_prompt_formats_and_answer_only_labels(llava, sources):
    """LLaVA's layout with a character-level Llama tokenizer: the "▁" before each answer is a target."""
    model, processor = llava
    tokenizer = processor.tokenizer
    plain = ConversationDataset(sources["pretrain"], tokenizer, processor.image_processor, PATCH_TOKENS,
                                sources["images"], "plain", image_aspect_ratio="square")
    item = plain[0]
    assert tokenizer.decode(item["input_ids"]) == "<s>" + "<image>" * PATCH_TOKENS + " a red square on grey\n"
    targets = tokenizer.convert_ids_to_tokens(item["input_ids"][item["labels"] != IGNORE_INDEX])
    assert "".join(targets) == "▁a▁red▁square▁on▁grey\n"
    assert item["pixel_values"].shape == (3, 32, 32)

    v1 = ConversationDataset(sources["finetune"], tokenizer, processor.image_processor, PATCH_TOKENS,
                             sources["images"], "v1")
    item = v1[0]
    expected = (f"<s> {VICUNA_SYSTEM} USER: " + "<image>" * PATCH_TOKENS + " \nWhat color is the square? "
                "ASSISTANT: red</s>USER: Is there a circle? ASSISTANT: No</s>")
    assert tokenizer.decode(item["input_ids"]) == expected
    targets = item["labels"] != IGNORE_INDEX
    answer_tokens = ["▁", "r", "e", "d", "</s>", "▁", "N", "o", "</s>"]
    assert tokenizer.convert_ids_to_tokens(item["input_ids"][targets]) == answer_tokens
    assert int((item["input_ids"] == model.config.image_token_id).sum()) == PATCH_TOKENS
    # the labels equal the ids where they are targets
    assert torch.equal(item["labels"][targets], item["input_ids"][targets])
    text_only = v1[len(v1) - 1]
    assert "pixel_values" not in text_only
    assert tokenizer.decode(text_only["input_ids"][text_only["labels"] != IGNORE_INDEX]) == "Hello!</s>"
    assert v1.modality_lengths == [12, 12, 12, 12, -3]
    assert v1.count_without_targets == plain.count_without_targets == 0


def test_collator_pads_right_and_stacks_images_in_batch_order(llava, sources):
    processor = llava[1]
    dataset = ConversationDataset(sources["finetune"], processor.tokenizer, processor.image_processor,
                                  PATCH_TOKENS, sources["images"], "v1")
    items = [dataset[4], dataset[1], dataset[2]]  # text-only first
    batch = ConversationCollator(pad_token_id=processor.tokenizer.pad_token_id)(items)
    lengths = [len(item["input_ids"]) for item in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, item in enumerate(items):
        size = lengths[row]
        assert torch.equal(batch["input_ids"][row, :size], item["input_ids"])
        assert (batch["input_ids"][row, size:] == processor.tokenizer.pad_token_id).all()
        assert (batch["labels"][row, size:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * size + [0] * (max(lengths) - size)
    assert torch.equal(batch["pixel_values"], torch.stack([items[1]["pixel_values"], items[2]["pixel_values"]]))
    assert "pixel_values" not in ConversationCollator(0)([items[0]])


def test_modality_grouped_batches():
    lengths = [5, -3, 8, 2, -7, 9, -1, 4, 6, -2, 3]  # 7 image records, 4 text-only
    batch, world = 2, 2
    order = modality_grouped_indices(lengths, batch, world, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    megabatch = batch * world
    full_megabatches = 7 // megabatch + 4 // megabatch  # 1 image + 1 text-only
    for start in range(0, full_megabatches * megabatch, megabatch):
        chunk = order[start : start + megabatch]
        assert len({lengths[i] > 0 for i in chunk}) == 1, "a full mega-batch mixes modalities"
        sizes = [abs(lengths[i]) for i in chunk]
        assert sizes == sorted(sizes, reverse=True)
    # the remainders (3 image records, then 0 text-only) come last
    assert all(lengths[i] > 0 for i in order[full_megabatches * megabatch :])


BAD_RECORDS = {
    "missing image": ({"id": "bad", "image": "nowhere.png", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}, "image file not found"),
    "image without placeholder": ({"id": "bad", "image": "000_red.png", "conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "exactly one <image>"),
    "two placeholders": ({"id": "bad", "image": "000_red.png", "conversations": [
        {"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "a"}]}, "found 2"),
    "placeholder without image": ({"id": "bad", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}, "no 'image' field"),
    "empty conversation": ({"id": "bad", "image": "000_red.png", "conversations": []}, "missing or empty"),
    "roles out of order": ({"id": "bad", "conversations": [
        {"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "conversations\\[0\\] must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_records_raise_errors_naming_the_record(case, llava, sources, tmp_path):
    record, message = BAD_RECORDS[case]
    good = json.loads(sources["finetune"].read_text())[0]
    path = tmp_path / "data.json"
    path.write_text(json.dumps([good, record]))
    processor = llava[1]
    with pytest.raises((ValueError, FileNotFoundError), match=f"record 1 \\(id 'bad'\\).*{message}"):
        ConversationDataset(path, processor.tokenizer, processor.image_processor, PATCH_TOKENS, sources["images"])


def test_prompts_need_the_image_token_and_room_for_the_image():
    tokenizer = tiny_llama_tokenizer()
    with pytest.raises(RecordError, match="record 7: the tokenizer has no <image> token"):
        encode_text(tokenizer, "<image>\nq", [], image_tokens=4, max_length=None, where="record 7")
    tokenizer = prepare_tokenizer(tokenizer)
    with pytest.raises(RecordError, match="record 7: the image tokens do not fit in model_max_length=4"):
        encode_text(tokenizer, "<image>\nq", [], image_tokens=4, max_length=4, where="record 7")
    input_ids, labels = encode_text(tokenizer, "q <image>\nq", [], image_tokens=4, max_length=None, where="")
    assert tokenizer.convert_ids_to_tokens(input_ids) == ["<s>", "▁", "q", "▁", *["<image>"] * 4, "▁", "\n", "q"]
    assert (labels == IGNORE_INDEX).all()


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def pretrained(sources, tmp_path_factory):
    """Stage 1 from the raw sources; returns the output directory and the model before training."""
    output = tmp_path_factory.mktemp("pretrain")
    argv = ["--stage", "pretrain", "--language_model", str(sources["lm"]), "--vision_tower", str(sources["fgclip"]),
            "--data_path", str(sources["pretrain"]), "--image_folder", str(sources["images"]),
            "--conversation_format", "plain", "--learning_rate", "1e-2", *common_train_args(output)]
    torch.manual_seed(1)
    initial, _ = build_llava(sources["lm"], sources["fgclip"])
    torch.manual_seed(1)  # the same initial projector and new embedding rows inside main()
    train_main(argv)
    return output, state(initial)


def test_pretrain_changes_only_the_projector(pretrained):
    output, before = pretrained
    after = state(load_llava(output)[0])
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"model.multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def lora_run(pretrained, sources, tmp_path_factory):
    base_dir = pretrained[0]
    output = tmp_path_factory.mktemp("lora")
    argv = ["--stage", "finetune", "--lora", "true", "--lora_r", "4", "--lora_alpha", "8",
            "--projector_lr", "3e-3", "--learning_rate", "1e-2", "--model_name_or_path", str(base_dir),
            "--data_path", str(sources["finetune"]), "--image_folder", str(sources["images"]),
            "--group_by_modality_length", "true", *common_train_args(output)]
    trainer = train_main(argv)
    return base_dir, output, trainer


def test_lora_finetune_changes_only_lora_and_projector(lora_run):
    base_dir, output, trainer = lora_run
    base = state(load_llava(base_dir)[0])
    peft_model = trainer.model
    assert isinstance(peft_model.get_base_model().loss_function, LanguageModelLoss)  # LLaVA's loss under LoRA too
    trained = dict(peft_model.named_parameters())
    lora = {name for name in trained if "lora_" in name}
    assert lora and all(".language_model." in name for name in lora)
    assert all(not trained[name].requires_grad for name in trained if "vision_tower" in name)
    assert any(trained[name].abs().sum() > 0 for name in lora if "lora_B" in name)  # B starts at zero
    for name, tensor in peft_model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer", "").replace(".original_module", "")
        if ".modules_to_save.default" in name:
            assert not torch.equal(tensor, base[plain.replace(".modules_to_save.default", "")]), name
        else:
            assert torch.equal(tensor, base[plain]), name
    projector = list(find_llava(peft_model).multi_modal_projector.parameters())
    projector_lr = {group["initial_lr"] for group in trainer.optimizer.param_groups
                    if any(p is q for p in group["params"] for q in projector)}
    assert projector_lr == {3e-3}


def test_merged_lora_is_base_plus_scaled_low_rank_update(lora_run):
    base_dir, output, trainer = lora_run
    base = state(load_llava(base_dir)[0])
    merged, processor = merge_lora(output)
    merged_state = state(merged)
    assert merged_state.keys() == base.keys()
    adapter = {name: tensor for name, tensor in trainer.model.named_parameters() if "lora_" in name}
    scale = 8 / 4
    for name in base:
        prefix = "base_model.model." + name.removesuffix(".weight")
        lora_a = adapter.get(f"{prefix}.lora_A.default.weight")
        if lora_a is not None:
            expected = base[name] + scale * adapter[f"{prefix}.lora_B.default.weight"] @ lora_a
            torch.testing.assert_close(merged_state[name], expected.detach())
        elif "multi_modal_projector" in name:
            trained = dict(trainer.model.named_parameters())
            copy = "base_model.model." + name.replace("projector.", "projector.modules_to_save.default.")
            assert torch.equal(merged_state[name], trained[copy].detach())
        else:
            assert torch.equal(merged_state[name], base[name]), name


def test_finetune_keeps_and_reports_records_without_targets(pretrained, sources, tmp_path, caplog):
    """An empty answer: LLaVA trains on the record with no target; the run counts it, and the
    strict flag refuses it before training, naming the record and field."""
    records = json.loads(sources["finetune"].read_text())
    records.append({"id": "empty", "conversations": [{"from": "human", "value": "Say nothing."},
                                                     {"from": "gpt", "value": ""}]})
    data = tmp_path / "with_empty.json"
    data.write_text(json.dumps(records))
    argv = ["--stage", "finetune", "--model_name_or_path", str(pretrained[0]), "--data_path", str(data),
            "--image_folder", str(sources["images"]), *common_train_args(tmp_path / "out", steps=1)]
    with pytest.raises(RecordError, match=r"record 5 \(id 'empty'\): conversations\[1\]: empty answer"):
        train_main([*argv, "--strict_records", "true"])
    trainer = train_main(argv)
    assert {"records_without_targets": 1}.items() <= trainer.state.log_history[-1].items()
    final = [record.message for record in caplog.records if record.name == "mllm.train"]
    assert final and "1 of 6 records have no target token" in final[-1] and "(id 'empty')" in final[-1]


def test_text_only_batch_still_runs_the_vision_path(pretrained, sources, tmp_path):
    model, processor = load_llava(pretrained[0])
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    model.lm_head.requires_grad_(True)
    args = LlavaTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = LlavaTrainer(model=model, args=args)
    dataset = ConversationDataset(sources["finetune"], processor.tokenizer, processor.image_processor,
                                  PATCH_TOKENS, sources["images"], "v1")
    batch = ConversationCollator(processor.tokenizer.pad_token_id)([dataset[4]])
    assert "pixel_values" not in batch
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    reference = model(**batch).loss
    torch.testing.assert_close(loss.detach(), reference.detach())
    for parameter in model.model.multi_modal_projector.parameters():
        assert parameter.grad is not None and not parameter.grad.any()
    assert model.lm_head.weight.grad.any()


def test_accumulated_gradient_is_the_mean_of_micro_batch_means_as_in_llava(pretrained, sources, tmp_path):
    """LLaVA's transformers 4.37 Trainer: loss of a micro-batch = mean over its targets, divided by the
    accumulation steps (not the summed loss over all targets of the accumulated batch)."""
    model, processor = load_llava(pretrained[0])
    model.requires_grad_(False)
    model.lm_head.requires_grad_(True)
    args = LlavaTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                  gradient_accumulation_steps=2)
    trainer = LlavaTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 2
    dataset = ConversationDataset(sources["finetune"], processor.tokenizer, processor.image_processor,
                                  PATCH_TOKENS, sources["images"], "v1")
    collate = ConversationCollator(processor.tokenizer.pad_token_id)
    batches = [collate([dataset[0]]), collate([dataset[4]])]  # 9 and 7 target tokens
    assert len({int((batch["labels"] != IGNORE_INDEX).sum()) for batch in batches}) == 2
    for batch in batches:
        trainer.training_step(model, batch, num_items_in_batch=torch.tensor(16))
    accumulated = model.lm_head.weight.grad.clone()
    model.lm_head.weight.grad = None
    (sum(model(**batch).loss for batch in batches) / 2).backward()
    torch.testing.assert_close(accumulated, model.lm_head.weight.grad)


def test_plain_python_with_deepspeed_trains_in_a_one_process_world(sources, tmp_path):
    """``python -m mllm.train --deepspeed ...`` without a launcher: DeepSpeed in a world of one process."""
    command = [sys.executable, "-m", "mllm.train", "--deepspeed", str(MLLM_DIR / "configs" / "zero2.json"),
               "--bf16", "true", "--stage", "pretrain", "--language_model", str(sources["lm"]),
               "--vision_tower", str(sources["fgclip"]), "--data_path", str(sources["pretrain"]),
               "--image_folder", str(sources["images"]), "--conversation_format", "plain",
               *common_train_args(tmp_path, steps=1)]
    environment = {name: value for name, value in os.environ.items() if name not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    result = subprocess.run(command, env={**environment, "OMP_NUM_THREADS": "1"}, cwd=MLLM_DIR.parent,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert SETTINGS_LINE.format(stage="pretrain", lora="", zero=2) in result.stdout


def test_lora_is_refused_outside_finetuning(tmp_path):
    with pytest.raises(ValueError, match="--lora applies to --stage finetune only"):
        LlavaTrainingArguments(output_dir=str(tmp_path), stage="pretrain", lora=True, report_to="none")


# ---------------------------------------------------------------- generation
def greedy_reference(model, processor, question, image_path, steps):
    """Greedy decoding written out: one full forward per new token, image features placed by hand."""
    tokenizer = processor.tokenizer
    before, after = f"{VICUNA_SYSTEM} USER: ", f"{question} ASSISTANT:"
    ids = tokenizer(before + ("" if image_path else after))["input_ids"]
    if image_path:  # LLaVA's layout: the text after the image tokenized on its own, without its BOS
        ids += [model.config.image_token_id] * PATCH_TOKENS + tokenizer("\n" + after)["input_ids"][1:]
    input_ids = torch.tensor([ids])
    features = None
    if image_path:
        pixels = processor.image_processor(Image.open(image_path), return_tensors="pt")["pixel_values"]
        features = torch.cat(model.model.get_image_features(pixel_values=pixels).pooler_output)
    generated = []
    for _ in range(steps):
        embeds = model.get_input_embeddings()(input_ids)
        if features is not None:
            embeds[input_ids == model.config.image_token_id] = features
        next_id = model(inputs_embeds=embeds).logits[0, -1].argmax()
        if next_id == tokenizer.eos_token_id:
            break
        generated.append(int(next_id))
        input_ids = torch.cat([input_ids, next_id.view(1, 1)], dim=1)
    return tokenizer.decode(generated, skip_special_tokens=True).strip()


@torch.no_grad()
def test_batched_greedy_generation_matches_a_token_by_token_argmax(pretrained, sources):
    model, processor = load_llava(pretrained[0])
    model.eval()
    questions = [
        {"question_id": "q0", "image": "000_red.png", "text": "What color is the square?"},
        {"question_id": "q1", "text": "Say hello."},  # shortest prompt: left-padded in the batch
        {"question_id": "q2", "image": "001_green.png", "text": "What color is the square?"},
    ]
    answers = generate_answers(model, processor, questions, sources["images"], batch_size=3, max_new_tokens=6)
    assert [answer["question_id"] for answer in answers] == ["q0", "q1", "q2"]
    for question, answer in zip(questions, answers):
        image_path = sources["images"] / question["image"] if "image" in question else None
        assert answer["text"] == greedy_reference(model, processor, question["text"], image_path, steps=6)
    assert answers[0]["text"] != answers[2]["text"]  # same question, different image


# ---------------------------------------------------------------- shipped settings
SETTINGS_LINE = "[mllm.train] stage {stage}{lora}: bf16 mixed precision, weights in bfloat16, DeepSpeed ZeRO-{zero}, 1 process(es)"
SCRIPT_OVERRIDES = ["--max_steps", "2", "--dataloader_num_workers", "0", "--save_strategy", "no", "--disable_tqdm", "true"]


def run_script(name, env):
    """``mllm/<name>`` with its own precision and DeepSpeed stage: only the process count, the batch
    and the number of steps are set for one CPU process (a machine without a GPU trains on the CPU)."""
    env = {**os.environ, "PYTHON": sys.executable, "NPROC": "1", "PER_DEVICE_BATCH": "2", "GLOBAL_BATCH": "2",
           "OMP_NUM_THREADS": "1", **env}
    for name_set_here in ("DEEPSPEED", "BF16"):
        env.pop(name_set_here, None)  # the script's defaults
    result = subprocess.run(["bash", str(MLLM_DIR / name), *SCRIPT_OVERRIDES], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
    return result.stdout


def saved_weights(directory):
    return load_file(Path(directory) / "model.safetensors")


@pytest.fixture(scope="module")
def script_pretrained(sources, tmp_path_factory):
    output = tmp_path_factory.mktemp("script_stage1")
    stdout = run_script("pretrain.sh", {"LANGUAGE_MODEL": str(sources["lm"]), "FGCLIP": str(sources["fgclip"]),
                                        "DATA": str(sources["pretrain"]), "IMAGES": str(sources["images"]),
                                        "OUTPUT": str(output)})
    return output, stdout


@pytest.mark.slow
def test_pretrain_script_trains_the_projector_in_bf16_under_zero2(script_pretrained, sources):
    output, stdout = script_pretrained
    assert SETTINGS_LINE.format(stage="pretrain", lora="", zero=2) in stdout
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 2
    built, _ = build_llava(sources["lm"], sources["fgclip"], dtype=torch.bfloat16)
    expected = {name: tensor for name, tensor in built.state_dict().items()}
    assert {tensor.dtype for tensor in saved_weights(output).values()} == {torch.bfloat16}
    trained, _ = load_llava(output, dtype=torch.bfloat16)
    for name, tensor in trained.state_dict().items():
        if "multi_modal_projector" in name:
            continue
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            tensor, expected[name] = tensor[:-1], expected[name][:-1]  # the <image> row starts at random
        assert torch.equal(tensor, expected[name]), name  # tower and language model as built, in bf16


@pytest.mark.slow
def test_full_finetune_script_trains_the_language_model_in_bf16_under_zero3(script_pretrained, sources, tmp_path):
    stage1, _ = script_pretrained
    stdout = run_script("finetune.sh", {"PRETRAINED": str(stage1), "DATA": str(sources["finetune"]),
                                        "IMAGES": str(sources["images"]), "OUTPUT": str(tmp_path)})
    assert SETTINGS_LINE.format(stage="finetune", lora="", zero=3) in stdout
    assert {tensor.dtype for tensor in saved_weights(tmp_path).values()} == {torch.bfloat16}
    before, after = state(load_llava(stage1)[0]), state(load_llava(tmp_path)[0])
    part = {name: "language_model" if name == "lm_head.weight" else name.split(".")[1] for name in before}
    changed = {part[name] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"language_model", "multi_modal_projector"}  # gathered from ZeRO-3's partitions
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


@pytest.mark.slow
def test_lora_finetune_script_with_its_defaults_trains_bf16_adapters_under_zero3(script_pretrained, sources,
                                                                                 tmp_path):
    """LoRA + ZeRO-3 + bf16: the adapters take the model's dtype (ZeRO-3 flattens one dtype per group)."""
    stage1, _ = script_pretrained
    stdout = run_script("finetune.sh", {"LORA": "1", "LORA_R": "4", "LORA_ALPHA": "8", "PRETRAINED": str(stage1),
                                        "DATA": str(sources["finetune"]), "IMAGES": str(sources["images"]),
                                        "OUTPUT": str(tmp_path)})
    assert SETTINGS_LINE.format(stage="finetune", lora=", LoRA r=4", zero=3) in stdout
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 8, 0.05)
    assert adapter["modules_to_save"] == ["multi_modal_projector"]
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    assert any(name.endswith("lora_B.weight") and tensor.any() for name, tensor in weights.items())


def test_bf16_without_deepspeed_trains_bf16_weights_with_float32_adapters(pretrained, sources, tmp_path, capsys):
    argv = ["--stage", "finetune", "--lora", "true", "--lora_r", "4", "--lora_alpha", "8",
            "--model_name_or_path", str(pretrained[0]), "--data_path", str(sources["finetune"]),
            "--image_folder", str(sources["images"]), "--bf16", "true", *common_train_args(tmp_path, steps=1)]
    trainer = train_main(argv)
    assert "bf16 mixed precision, weights in bfloat16, float32, no DeepSpeed" in capsys.readouterr().out
    dtypes = {("lora_" in name, tensor.dtype) for name, tensor in trainer.model.named_parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}


ZERO3_LOAD = """
import json, sys
from fgclip.launch import one_process_world
from mllm.train import LlavaTrainingArguments, ModelArguments, load_model
with one_process_world("--deepspeed"):
    args = LlavaTrainingArguments(output_dir=sys.argv[2], deepspeed=sys.argv[3], bf16=True, report_to="none")
    model, _ = load_model(ModelArguments(model_name_or_path=sys.argv[1]), args)
parameters = list(model.parameters())
print(json.dumps({"parameters": len(parameters), "partitioned": sum(hasattr(p, "ds_id") for p in parameters),
                  "held": sum(p.numel() for p in parameters), "elements": sum(p.ds_numel for p in parameters)}))
"""


def test_zero3_loads_the_model_partitioned(pretrained, tmp_path):
    """Under ZeRO-3 ``from_pretrained`` runs inside ``deepspeed.zero.Init``: every parameter is a partition
    handle whose full tensor is never held (``numel() == 0``), with the checkpoint's element count."""
    result = subprocess.run([sys.executable, "-c", ZERO3_LOAD, str(pretrained[0]), str(tmp_path),
                             str(MLLM_DIR / "configs" / "zero3.json")], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    expected = saved_weights(pretrained[0])
    assert counts["parameters"] == counts["partitioned"] == len(expected)
    assert counts["held"] == 0
    assert counts["elements"] == sum(tensor.numel() for tensor in expected.values())


BUILDER_MEMORY = """
import json, sys, threading, torch
from mllm import build_llava

def anonymous_bytes():
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith("RssAnon:"))

language_model, tiny_language_model, tower = sys.argv[1:4]
build_llava(tiny_language_model, tower, dtype=torch.bfloat16)  # imports and lazily loaded modules first
before = peak = anonymous_bytes()
done = threading.Event()

def sample():
    global peak
    while not done.wait(0.002):
        peak = max(peak, anonymous_bytes())

sampler = threading.Thread(target=sample)
sampler.start()
model, _ = build_llava(language_model, tower, dtype=torch.bfloat16)
touched = sum(float(p.float().sum()) for p in model.parameters())  # every weight resident, as in training
done.set()
sampler.join()
print(json.dumps({"before": before, "peak": max(peak, anonymous_bytes()),
                  "weights": sum(p.numel() * p.element_size() for p in model.parameters())}))
"""


def test_builder_holds_no_float32_copy_of_the_language_model(sources, tmp_path):
    """The builder's peak memory stays within 1.3x the bf16 weights; a float32 load and cast would need 3x.
    A 200M-parameter Llama saved in float16 as Vicuna is, so that its size dominates the measurement.
    Anonymous memory is sampled: the checkpoint's memory-mapped pages are page cache, not a copy."""
    tokenizer = tiny_llama_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer) + 1, hidden_size=1024, intermediate_size=2816,
                         num_hidden_layers=16, num_attention_heads=8, num_key_value_heads=8,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.device("meta"):
        language_model = LlamaForCausalLM(config)
    language_model.to_empty(device="cpu").requires_grad_(False)
    for parameter in language_model.parameters():
        parameter.normal_(std=0.02)
    language_model.half().save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    del language_model
    result = subprocess.run([sys.executable, "-c", BUILDER_MEMORY, str(tmp_path / "lm"), str(sources["lm"]),
                             str(sources["fgclip"])], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    memory = json.loads(result.stdout.strip().splitlines()[-1])
    assert memory["weights"] > 350e6
    assert memory["peak"] - memory["before"] <= 1.3 * memory["weights"]


@pytest.mark.slow
def test_finetune_script_starts_from_llavas_stage1_projector_file(sources, tmp_path):
    """``finetune.sh --pretrain_mm_mlp_adapter mm_projector.bin`` with LANGUAGE_MODEL and FGCLIP, as
    LLaVA's finetune script starts: the stage-1 projector (LLaVA's key names) is loaded into ours."""
    from mllm.testing import values_from_name

    names = {"model.mm_projector.0.weight": (32, 32), "model.mm_projector.0.bias": (32,),
             "model.mm_projector.2.weight": (32, 32), "model.mm_projector.2.bias": (32,)}
    adapter = {name: values_from_name(name, shape, seed=5) for name, shape in names.items()}
    torch.save(adapter, tmp_path / "mm_projector.bin")
    env = {**os.environ, "PYTHON": sys.executable, "NPROC": "1", "PER_DEVICE_BATCH": "2", "GLOBAL_BATCH": "2",
           "OMP_NUM_THREADS": "1", "DEEPSPEED": "", "BF16": "false", "LANGUAGE_MODEL": str(sources["lm"]),
           "FGCLIP": str(sources["fgclip"]), "DATA": str(sources["finetune"]), "IMAGES": str(sources["images"]),
           "OUTPUT": str(tmp_path / "out")}
    env.pop("PRETRAINED", None)
    overrides = [argument if argument != "2" else "1" for argument in SCRIPT_OVERRIDES]  # one step
    result = subprocess.run(["bash", str(MLLM_DIR / "finetune.sh"), "--pretrain_mm_mlp_adapter",
                             str(tmp_path / "mm_projector.bin"), *overrides], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    base, _ = load_llava(tmp_path / "out" / "base")
    projector = base.model.multi_modal_projector
    for name, tensor in adapter.items():
        linear = projector.linear_1 if ".0." in name else projector.linear_2
        assert torch.equal(getattr(linear, name.rsplit(".", 1)[1]), tensor), name
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 1
    missing = subprocess.run(["bash", str(MLLM_DIR / "finetune.sh")], env={**env, "LANGUAGE_MODEL": ""},
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "set PRETRAINED to the stage-1 output directory" in missing.stderr
