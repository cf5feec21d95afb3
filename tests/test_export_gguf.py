"""`vistune export --to gguf`: llama.cpp itself (libllama + libmtmd, built by `make install`) runs the exported
files and computes what vistune computes: image embeddings, prompt tokens and greedy answers.

llama.cpp's CPU path rounds a few steps to fp16 whatever the file's precision (the patch embedding's im2col, the
GELU tables, flash attention's K/V); `llama_cpp_steps` gives vistune the same roundings, and against that the
embeddings agree to 1e-4 relative. The tiny Llama speaks Llama's own SentencePiece vocabulary. CLIP towers hit a llama.cpp defect (its llava graph puts the CLS token after
the patches: ggml-org/llama.cpp#25814); their tests pin that down instead of hiding it."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import make_llama_tokenizer

from vistune.cli import main
from vistune.config import ModelConfig
from vistune.conversation import IMAGE_TOKEN_ID, Message, conversation_messages
from vistune.inference.assistant import Assistant
from vistune.inference.llamacpp import runtime_problem
from vistune.model.checkpoint import save_checkpoint
from vistune.model.gguf_export import find_converter
from vistune.model.tiny import tiny_llm, tiny_vision_tower, tiny_vlm
from vistune.model.vlm import VisionLanguageModel

SOURCE = Path(sys.prefix) / "llama.cpp" / "src"  # where `make install` unpacks llama.cpp's source
PROBLEM = runtime_problem() or (find_converter() if isinstance(find_converter(), str) else None)
needs_llama_cpp = pytest.mark.skipif(PROBLEM is not None, reason=f"llama.cpp is not available: {PROBLEM}")

QA = [("What is in the picture?", "A red square beside two blue circles."),
      ("Describe the image briefly.", "Three shapes on a grey background."),
      ("Which shape is the largest?", "The circle on the left is the largest.")]
SIZE = 32  # the tiny towers' input: square images of this size get the same pixels on both sides


def images() -> list[Image.Image]:
    """One square image per question, each its own colours (so a tiny model can tell them apart), with noise."""
    rng = np.random.RandomState(0)
    out = []
    for k, (background, shape) in enumerate((((200, 40, 40), (40, 40, 220)), ((128, 128, 128), (250, 250, 250)),
                                            ((30, 140, 40), (240, 200, 20)))):
        x = np.empty((SIZE, SIZE, 3), dtype=np.float64)
        x[:] = background
        x[4 + 6 * k:16 + 6 * k, 6:20] = shape
        out.append(Image.fromarray(np.clip(x + rng.randn(SIZE, SIZE, 3) * 20, 0, 255).astype(np.uint8)))
    return out


def overfit(model, rounds: int = 40) -> None:
    """Deterministic steps on the three (image, question, answer) samples so greedy answers differ per question
    and have margins wider than llama.cpp's fp16 roundings."""
    torch.manual_seed(0)
    params = [p for n, p in model.named_parameters()
              if not n.startswith("vision_tower.") and "embed_tokens" not in n]  # the big (tied) table stays
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(rounds):
        for (q, a), image in zip(QA, images()):
            r = model.renderer.render(conversation_messages(q) + [Message("assistant", a)], num_images=1)
            loss = model(torch.tensor([r.input_ids]), pixel_values=model.image_processor.batch([image]),
                         labels=torch.tensor([r.labels])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def greedy(model, question: str, image, max_new_tokens: int = 12) -> list[int]:
    """vistune's greedy token ids (the highest logit; ties to the lowest id, as numpy's argmax)."""
    ids = model.renderer.render(conversation_messages(question), num_images=1, add_generation_prompt=True).input_ids
    pixels = model.image_processor.batch([image])
    eot = set(model.renderer.end_of_turn_ids()) | {model.tokenizer.eos_token_id}
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + out]), pixel_values=pixels).logits[0, -1]
            out.append(int(np.argmax(logits.numpy())))
            if out[-1] in eot:
                break
    return out


def llama_cpp_steps(model):
    """A copy of `model` that rounds where llama.cpp's CPU path rounds to fp16: pixels and patch weights (im2col),
    the tower's and projector's GELU (fp16 tables, exact beyond ±10)."""
    model = copy.deepcopy(model)
    vision = getattr(model.vision_tower.model, "vision_model", model.vision_tower.model)
    patch = vision.embeddings.patch_embedding
    patch.weight.data = patch.weight.data.half().float()
    patch.register_forward_pre_hook(lambda module, args: (args[0].half().float(),))

    class Table(torch.nn.Module):
        def __init__(self, fn) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, x):
            y = self.fn(x.half().float()).half().float()
            return torch.where(x >= 10, x, torch.where(x <= -10, torch.zeros_like(x), y))

    for layer in vision.encoder.layers:
        layer.mlp.activation_fn = Table(layer.mlp.activation_fn)
    if model.projector.kind == "mlp2x_gelu":  # libmtmd's projector GELU is the tanh form
        model.projector.act = Table(lambda x: torch.nn.functional.gelu(x, approximate="tanh"))
    return model


def relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def llama_vocab_dir(tmp_path_factory):
    """Llama's SentencePiece vocabulary as a `tokenizer.model`, rebuilt from the GGUF vocabulary llama.cpp ships
    for its tokenizer tests (pieces, scores, types); it splits llama.cpp's own test texts exactly as llama.cpp's
    expected output says."""
    import gguf
    import sentencepiece as spm

    from vistune.model.spm_vocab import bpe_model

    vocab = SOURCE / "models" / "ggml-vocab-llama-spm.gguf"
    fields = {k: f.contents() for k, f in gguf.GGUFReader(vocab).fields.items()}
    pieces = list(zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.scores"],
                      fields["tokenizer.ggml.token_type"]))
    out = tmp_path_factory.mktemp("llama-vocab")
    (out / "tokenizer.model").write_bytes(bpe_model(pieces, 0, 1, 2, add_dummy_prefix=True))
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    texts = vocab.with_suffix(".gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    expected = vocab.with_suffix(".gguf.out").read_text().strip().split("\n")
    assert len(expected) >= 40
    assert [sp.encode(t) for t in texts[:len(expected)]] == [[int(i) for i in e.split()] for e in expected]
    return out


def build(tower: str, projector: str, tokenizer, template: str = "vicuna_v1", llm=None):
    vt = tiny_vision_tower(tower, image_size=SIZE, patch_size=8)
    llm = llm if llm is not None else tiny_llm(tokenizer, seed=0)
    config = ModelConfig(vision_tower=f"tiny-{tower}", vision_layer=-2, vision_select="patch", projector=projector,
                         llm="tiny-llama", template=template)
    torch.manual_seed(0)
    return VisionLanguageModel.from_parts(config, vt, llm, tokenizer)


def export(model, directory: Path, outtype: str = "f32") -> Path:
    save_checkpoint(model, directory / "ckpt")
    code = main(["export", "--to", "gguf", "--model", str(directory / "ckpt"), "--out", str(directory / "gguf"),
                 "--outtype", outtype])
    assert code == 0
    return directory / "gguf"


def load(directory: Path, exact: bool = False):
    from vistune.inference.llamacpp import LlamaCppModel

    return LlamaCppModel(directory / "model.gguf", directory / "mmproj.gguf", exact=exact)


@pytest.fixture(scope="module", params=[("siglip", "mlp2x_gelu", False), ("siglip", "linear", True)],
                ids=lambda p: f"{p[0]}-{p[1]}-legacy{p[2]}")
def exported(request, tmp_path_factory):
    """A tiny SigLIP tower, the projector and a tiny Llama with Llama's SentencePiece vocabulary, overfit and
    exported in f32, with llama.cpp running the export."""
    if PROBLEM:
        pytest.skip(f"llama.cpp is not available: {PROBLEM}")
    tower, projector, legacy = request.param
    model = build(tower, projector, make_llama_tokenizer(request.getfixturevalue("llama_vocab_dir"), "fast", legacy))
    overfit(model)
    out = export(model, tmp_path_factory.mktemp(f"{tower}-{projector}"))
    runtime = load(out, exact=True)
    yield model, runtime, out
    runtime.close()


@needs_llama_cpp
def test_image_embeddings_match_vistunes_projector_output(exported):
    model, runtime, out = exported
    with torch.no_grad():
        for image in images():
            pixels = model.image_processor.batch([image])
            ours = model.encode_images(pixels)[0].numpy()  # (N, D)
            same_steps = llama_cpp_steps(model).encode_images(pixels)[0].numpy()
            theirs = runtime.image_embeddings(image)
            assert theirs.shape == ours.shape == (model.num_image_tokens, ours.shape[1])
            assert relative(theirs, same_steps) <= 1e-4
            assert relative(theirs, ours) <= 2e-3  # llama.cpp's fp16 steps, nothing more
    with load(out) as default:  # llama.cpp's defaults (flash attention on)
        assert relative(default.image_embeddings(images()[-1]), ours) <= 2e-3


@needs_llama_cpp
def test_llama_cpp_prompt_tokens_are_vistunes(exported):
    """The GGUF's chat template, as llama-server and llama-mtmd-cli fill it, gives vistune's prompt ids."""
    model, runtime, _ = exported
    for question, _ in QA:
        expected = model.renderer.render(conversation_messages(question), num_images=1,
                                         add_generation_prompt=True).input_ids
        text_ids = [t for t in expected if t != IMAGE_TOKEN_ID]
        forms = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],  # server
            [{"role": "user", "content": "<__media__>" + question}],  # llama-mtmd-cli prepends the marker
            [{"role": "user", "content": "<image>\n" + question}],  # vistune's own layout
        ]
        for messages in forms:
            got = runtime.generate(runtime.chat_prompt(messages), images()[:1], max_new_tokens=0)
            assert got.prompt_tokens == text_ids, messages
            assert got.image_positions == [model.num_image_tokens]


@needs_llama_cpp
def test_greedy_answers_are_vistunes_token_for_token(exported):
    model, runtime, _ = exported
    answers = []
    for (question, _), image in zip(QA, images()):
        ours = greedy(model, question, image)
        prompt = runtime.chat_prompt([{"role": "user", "content": [{"type": "image"},
                                                                   {"type": "text", "text": question}]}])
        theirs = runtime.generate(prompt, [image], max_new_tokens=12).tokens
        assert theirs == ours
        assert len(ours) >= 6  # real answers, not an immediate end of turn
        answers.append(ours)
    assert len({tuple(a) for a in answers}) == 3  # each question its own answer
    text = Assistant.wrap(model).chat(images()[0], QA[0][0], max_new_tokens=12)
    assert text == model.tokenizer.decode(answers[0], skip_special_tokens=True).strip()


@needs_llama_cpp
def test_exported_files_and_readme(exported):
    import gguf

    model, _, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "mmproj.gguf", "model.gguf"]
    reader = gguf.GGUFReader(out / "mmproj.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "clip" and fields["clip.projector_type"] == "mlp"
    assert fields["clip.use_gelu"] is True  # SigLIP's tanh GELU (CLIP's quick GELU writes false)
    assert fields["clip.vision.feature_layer"] == [1]  # hidden state -2 of 2 blocks
    assert not any(t.name.startswith("v.post_ln") for t in reader.tensors)
    assert fields["clip.vision.block_count"] == 1 and not any(t.name.startswith("v.blk.1.") for t in reader.tensors)
    vocab = {k: f.contents() for k, f in gguf.GGUFReader(out / "model.gguf").fields.items()
             if k.startswith("tokenizer.ggml.")}
    assert vocab["tokenizer.ggml.model"] == "llama"  # SentencePiece merging
    assert len(set(vocab["tokenizer.ggml.scores"])) > 20000  # the merge order, not one score for every piece
    assert vocab["tokenizer.ggml.add_space_prefix"] is model.tokenizer.legacy
    readme = (out / "README.md").read_text()
    for needle in ("llama-mtmd-cli", "llama-server", "--mmproj", "Modelfile", "pads a non-square image"):
        assert needle in readme


@needs_llama_cpp
def test_clip_tower_hits_llama_cpps_cls_ordering(tmp_path, tokenizer):
    """The CLIP export is what llama.cpp's llava format means (CLS first); llama.cpp's graph of this version puts
    CLS last (ggml-org/llama.cpp#25814), and its output is exactly that: a CLS-last run of vistune's weights."""
    model = build("clip", "mlp2x_gelu", tokenizer)
    out = export(model, tmp_path)
    reader_names = [t.name for t in __import__("gguf").GGUFReader(out / "mmproj.gguf").tensors]
    assert "v.class_embd" in reader_names and "v.pre_ln.weight" in reader_names
    image = images()[0]
    steps = llama_cpp_steps(model)
    vision = getattr(steps.vision_tower.model, "vision_model", steps.vision_tower.model)
    with torch.no_grad(), load(out, exact=True) as runtime:
        theirs = runtime.image_embeddings(image)
        pixels = steps.image_processor.batch([image])
        ours = steps.encode_images(pixels)[0].numpy()
        patches = vision.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (1, N, D)
        x = torch.cat([patches, vision.embeddings.class_embedding[None, None]], 1)  # CLS last
        x = vision.pre_layrnorm(x + vision.embeddings.position_embedding.weight[None])
        for layer in vision.encoder.layers[: steps.vision_tower.layer % 3]:
            y = layer(x, None)
            x = y[0] if isinstance(y, tuple) else y
        cls_last = steps.projector(x[:, 1:])[0].numpy()  # rows 1..N: patches 1..N-1 and CLS
    assert relative(theirs, cls_last) <= 1e-4
    assert relative(theirs, ours) > 0.1  # when llama.cpp fixes the order this fails: then test CLIP like SigLIP


def test_refused_export_exits_2_with_every_reason_and_writes_nothing(tmp_path, capsys):
    model = tiny_vlm("efficientnet", projector="linear")
    from dataclasses import replace

    model.config = replace(model.config, projector_norm="rms", feature_norm="token")
    save_checkpoint(model, tmp_path / "ckpt")
    code = main(["export", "--to", "gguf", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "3 blockers" in err and "efficientnet-lite0" in err and "projector_norm=rms" in err
    assert "feature_norm=token" in err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.slow
@needs_llama_cpp
def test_smollm2_with_a_tiny_tower_gives_vistunes_greedy_answer(tmp_path):
    """The default LLM (SmolLM2-135M-Instruct, ChatML through its own chat template) with a tiny SigLIP tower
    (a CLIP tower meets llama.cpp's CLS defect, see above)."""
    from vistune.model.llm import load_llm

    llm, tokenizer = load_llm("smollm2-135m-instruct")
    model = build("siglip", "mlp2x_gelu", tokenizer, template="chat_template", llm=llm)
    out = export(model, tmp_path)
    image = images()[0]
    ours = greedy(model, QA[0][0], image, max_new_tokens=16)
    with load(out, exact=True) as runtime:
        prompt = runtime.chat_prompt([{"role": "user", "content": [{"type": "image"},
                                                                   {"type": "text", "text": QA[0][0]}]}])
        got = runtime.generate(prompt, [image], max_new_tokens=16)
    expected = model.renderer.render(conversation_messages(QA[0][0]), num_images=1,
                                     add_generation_prompt=True).input_ids
    assert got.prompt_tokens == [t for t in expected if t != IMAGE_TOKEN_ID]
    assert got.tokens == ours and len(ours) >= 6


@needs_llama_cpp
def test_a_q8_0_export_answers_in_llama_cpp_as_vistune_does(exported, tmp_path):
    """q8_0 weights take llama.cpp's quantized matmul kernels, which f32 files never reach (its AMX ones died with
    SIGILL on an AMX CPU, so `make install` leaves them out). Run in a child process so that a crash fails this
    test instead of ending the session; the overfit answers survive the 8-bit weights."""
    import gguf
    import json
    import subprocess

    model, _, f32_out = exported
    out = export(model, tmp_path, outtype="q8_0")
    types = {t.tensor_type.name for t in gguf.GGUFReader(out / "model.gguf").tensors if len(t.shape) == 2}
    assert "Q8_0" in types
    image_path = tmp_path / "image.png"
    images()[0].save(image_path)
    script = (
        "import json, sys\nfrom PIL import Image\nfrom vistune.inference.llamacpp import LlamaCppModel\n"
        f"m = LlamaCppModel({str(out / 'model.gguf')!r}, {str(out / 'mmproj.gguf')!r})\n"
        "p = m.chat_prompt([{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': sys.argv[1]}]}])\n"
        f"print(json.dumps(m.generate(p, [Image.open({str(image_path)!r}).convert('RGB')], max_new_tokens=12).tokens))\n")
    run = subprocess.run([sys.executable, "-c", script, QA[0][0]], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"llama.cpp exited with {run.returncode}: {run.stderr[-2000:]}"
    tokens = json.loads(run.stdout.strip().splitlines()[-1])
    assert tokens == greedy(model, QA[0][0], images()[0]) and len(tokens) >= 6
