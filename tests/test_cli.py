"""The `interp` command as a user runs it: exit codes, one-line errors, whole-or-nothing output."""
import json
import subprocess
import sys

import pytest
import torch

from interp.capture import Capture


def run(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "interp", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _one_clean_line(proc):
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("interp: converting")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("interp: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["atlas", "--model", "gpt-17", "--out", "{out}"], "unknown model 'gpt-17'; available: smollm2-135m"),
        (["trace", "--model", "{tmp}/none.gguf", "--out", "{out}", "-t", "hi"], "does not exist"),
        (["trace", "--out", "{out}"], "no input text"),
        (["trace", "--out", "{out}", "-t", "hi", "--layers", "3-x"], "is not a list like 0,2,5-7"),
        (["atlas", "--out", "{out}", "--device", "cuda:0"], "no CUDA GPU"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["atlas", "--out", "{out}", "--n-texts", "0"], "--n-texts"),
    ],
)
def test_bad_input_exits_2_with_one_line(smollm2, tmp_path, args, expected):
    """`smollm2`: the model is already converted, so stderr holds only the error line."""
    import torch

    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    proc = run(*[a.format(out=out, tmp=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert expected in _one_clean_line(proc)
    assert not out.exists()


def test_failure_mid_run_leaves_nothing_half_written(smollm2, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    proc = run("trace", "--out", str(out), "-t", "a prompt longer than four tokens, surely", "--what", "pattern",
               "--max-pattern-tokens", "4")
    assert proc.returncode == 2 and "max_pattern_tokens" in _one_clean_line(proc)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_models_json():
    proc = run("models", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "interp.models/1"
    assert {m["name"] for m in doc["models"]} == {"smollm2-135m", "gemma3-270m"}


def test_trace_writes_capture_and_head_means(smollm2, tmp_path):
    out = tmp_path / "trace"
    proc = run("trace", "--out", str(out), "-t", "When Mary and John went to the store,", "-t", "The cat sat",
               "--layers", "0,5-6", "--heads", "0-2", "--what", "z,v_norm,entropy", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "interp.trace/1" and doc["model"] == "smollm2-135m" and doc["layers"] == [0, 5, 6]
    cap = Capture.load(out / "capture")
    for prompt, text in enumerate(["When Mary and John went to the store,", "The cat sat"]):
        _, cache = smollm2.run_with_cache(text, names_filter=lambda n: n.endswith("hook_z"))
        for layer in (0, 5, 6):  # TransformerLens' hook_z of the chosen heads, [pos, head, d_head]
            torch.testing.assert_close(cap.get("z", layer, prompt), cache["z", layer][0, :, :3], rtol=1e-4, atol=1e-5)
    rows = json.loads((out / "trace.json").read_text())["head_means"]["rows"]
    assert len(rows) == 9 and {"v_norm", "entropy"} <= set(rows[0])


def test_atlas_writes_self_contained_report(smollm2, tmp_path):
    out = tmp_path / "atlas"
    proc = run("atlas", "--out", str(out), "--n-texts", "3", "--max-tokens", "32", timeout=1500)
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    assert "<script src=" not in page and "Plotly" in page and "Model card" in page
    doc = json.loads((out / "atlas.json").read_text())
    assert doc["schema"] == "interp.atlas/1" and doc["model"] == "smollm2-135m"
    assert doc["card"]["n_heads"] == 9 and doc["card"]["n_key_value_heads"] == 3
    assert len(doc["sections"]["head_summary"]["rows"]) == 30 * 9


def test_trace_stats_uses_kernels_and_writes_shards(smollm2, tmp_path):
    out = tmp_path / "stats"
    proc = run("trace", "--stats", "--received", "--out", str(out), "-t", "When Mary and John went to the store, John gave a drink to")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "trace.json").read_text())
    assert doc["mode"] == "stats" and doc["lengths"] == [14]  # SmolLM2 prepends no BOS
    assert {"alpha_first", "sink_rate", "entropy"} <= set(doc["head_means"]["metrics"])
    from safetensors.torch import load_file

    shard = load_file(str(out / "stats" / "stats-00000.safetensors"))
    text = "When Mary and John went to the store, John gave a drink to"
    _, cache = smollm2.run_with_cache(text, names_filter=lambda n: n.endswith("hook_pattern"))
    pattern = torch.stack([cache["pattern", layer][0] for layer in range(30)]).double()  # [layer, head, q, k]
    entropy = -(pattern * pattern.clamp_min(1e-300).log()).sum(-1)  # [layer, head, q]
    alpha = pattern.sum(-2) / torch.arange(14, 0, -1, dtype=torch.float64)  # received / queries that see the key
    torch.testing.assert_close(shard["entropy"].double(), entropy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shard["alpha"].double(), alpha, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("command, args, schema_file", [
    ("sinks", ["--n-texts", "3"], "sinks.json"),
    ("heads", ["--n-texts", "3", "--max-tokens", "32"], "heads.json"),
    ("dormant", ["--domains", "legal,repeated", "--n-texts", "2", "--max-tokens", "48"], "dormant.json"),
])
def test_analysis_commands_write_json_and_report(smollm2, tmp_path, command, args, schema_file):
    out = tmp_path / command
    proc = run(command, "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / schema_file).read_text())
    assert doc["schema"] == f"interp.{command}/1" and doc["model"] == "smollm2-135m"
    page = (out / f"{command}.html").read_text()
    assert "<script src=" not in page and "Plotly" in page
    # every report names how faithfully the model was converted: the parity measured at conversion
    assert doc["parity"]["passed"] and doc["parity"]["max_logprob_diff"] < 1e-3
    assert "Model conversion" in page and f"{doc['parity']['max_logprob_diff']:.2g}" in page


def test_dormant_rejects_an_unknown_domain(tmp_path):
    proc = run("dormant", "--out", str(tmp_path / "d"), "--domains", "prose,poetry")
    assert proc.returncode == 2 and "unknown domain 'poetry'" in _one_clean_line(proc)
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------------
# Bad input is refused before any weights load: every command, in-process, with load_model replaced by a
# function that fails the test. Each case must exit 2 with one line, no traceback, leave --out as it was,
# and return within a few seconds.

def _sae_dirs(tmp):
    """SAE directories a user might point at: broken cfg.json, wrong width, wrong layer, trained with seed 3,
    a weights file that is not safetensors, and one whose W_dec does not have cfg.json's shape."""
    from safetensors.torch import save_file

    made = {}
    layer3 = {"d_in": 576, "d_sae": 64, "metadata": {"hook_name": "blocks.3.attn.hook_z"}}
    for name, cfg in {"broken": "{not json", "wide": {"d_in": 10, "d_sae": 20, "metadata": {"hook_name": "blocks.3.attn.hook_z"}},
                      "deep": {"d_in": 576, "d_sae": 64, "metadata": {"hook_name": "blocks.99.attn.hook_z"}},
                      "seeded": layer3, "junk": layer3, "transposed": layer3,
                      "resid": {"d_in": 576, "d_sae": 64, "metadata": {"hook_name": "blocks.3.hook_resid_pre"}}}.items():
        d = tmp / f"sae_{name}"
        d.mkdir()
        (d / "cfg.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        if isinstance(cfg, dict):  # weights of the sizes cfg.json names, as sae_lens saves them
            d_in, d_sae = cfg["d_in"], cfg["d_sae"]
            save_file({"W_enc": torch.zeros(d_in, d_sae), "b_enc": torch.zeros(d_sae), "W_dec": torch.zeros(d_sae, d_in),
                       "b_dec": torch.zeros(d_in)}, str(d / "sae_weights.safetensors"))
        else:
            (d / "sae_weights.safetensors").write_bytes(b"")
        made[name] = d
    (made["seeded"] / "training.json").write_text(json.dumps({"data": {"seed": 3, "corpus": "bible"}}))
    (made["junk"] / "sae_weights.safetensors").write_bytes(bytes(range(256)) * 4)
    save_file({"W_enc": torch.zeros(576, 64), "W_dec": torch.zeros(576, 64), "b_dec": torch.zeros(576)},
              str(made["transposed"] / "sae_weights.safetensors"))
    return made


BAD_INPUTS = [
    (["trace", "--file", "{tmp}/latin1.txt"], "is not UTF-8 text"),
    (["trace", "-t", "hi", "--layers", "30"], "--layers 30 is out of range; smollm2-135m has layers 0-29"),
    (["trace", "-t", "hi", "--heads", "2,9"], "--heads 9 is out of range; smollm2-135m has heads 0-8"),
    (["trace", "-t", "hi", "--out", "{tmp}/file.txt"], "is a file"),
    (["trace", "-t", "hi", "--what", "z,attn_weights"], "--what: unknown activation 'attn_weights'"),
    (["atlas", "--max-tokens", "9000"], "--max-tokens 9000 exceeds the context of smollm2-135m (8192 tokens)"),
    (["atlas", "--out", "{tmp}/file.txt/sub/out"], "cannot be a folder: "),
    (["atlas", "--model", "gemma3-270m", "--max-tokens", "40000"], "exceeds the context of gemma3-270m (32768 tokens)"),
    (["atlas", "--device", "cuda:0"], "no CUDA GPU"),
    (["heads", "--max-tokens", "10000"], "exceeds the context"),
    (["sinks", "--max-tokens", "10000"], "exceeds the context"),
    (["sinks", "--k", "70"], "--k 70 must be a position inside"),
    (["dormant", "--domains", "prose,poetry"], "unknown domain 'poetry'"),
    (["dormant", "--max-tokens", "9000"], "exceeds the context"),
    (["compare", "--models", "smollm2-135m,no-such-model"], "unknown model 'no-such-model'"),
    (["ioi", "--model", "gpt-17"], "unknown model 'gpt-17'"),
    (["retrieval", "--lengths", "1024,20000"], "--lengths 20000 exceeds the context of smollm2-135m (8192 tokens)"),
    (["retrieval", "--depths", "0.5,1.5"], "--depths must lie in [0, 1]"),
    (["retrieval", "--mask-ks", "5,200"], "--mask-ks 5,200: each k must lie in 1..135"),
    (["retrieval", "--lengths", "1024", "--mask-length", "777"], "--mask-length 777 is not one of the lengths [1024]"),
    (["retrieval", "--attention", "flash"], "--attention 'flash' is not sdpa or kernels"),
    (["retrieval", "--lengths", "10x"], "is not a comma-separated list of integers"),
    (["safety", "--prompts", "500"], "--prompts 500 is more than the"),
    (["safety", "--layers", "31"], "--layers 31 is out of range; smollm2-135m has layers 0-29"),
    (["safety", "--layers", "3", "--ks", "1,5"], "--ks '1,5': each k must lie in 1..4"),
    (["safety", "--ablation", "keys"], "--ablation 'keys' is not one of"),
    (["sae", "train", "--layer", "30"], "--layers 30 is out of range"),
    (["sae", "train", "--layer", "3", "--architecture", "gated"], "--architecture 'gated' is not one of"),
    (["sae", "train", "--layer", "3", "--corpus", "{tmp}/no-such-corpus"], "is not a known corpus or an existing path"),
    (["sae", "train", "--layer", "3", "--context-size", "9000"], "--context-size 9000 exceeds the context"),
    (["sae", "train", "--layer", "3", "--tokens", "100"], "--tokens 100 is fewer than one batch"),
    (["sae", "train", "--layer", "3", "--lm-dtype", "int8"], "--lm-dtype 'int8' is not"),
    (["sae", "eval", "--sae", "{tmp}/sae_broken"], "cfg.json is not valid JSON"),
    (["sae", "eval", "--sae", "{tmp}/sae_wide"], "the SAE has d_in 10 but smollm2-135m's hook_z has 9 x 64 = 576"),
    (["sae", "eval", "--sae", "{tmp}/sae_deep"], "the SAE reads layer 99; smollm2-135m has layers 0-29"),
    (["sae", "eval", "--sae", "{tmp}/sae_resid"], "not blocks.L.attn.hook_z"),
    (["sae", "eval", "--sae", "{tmp}/sae_seeded", "--seed", "5"], "was trained with seed 3"),
    (["sae", "eval", "--sae", "{tmp}/nowhere"], "is not an SAE directory"),
    (["sae", "features", "--sae", "{tmp}/sae_seeded", "--features", "3,64"], "--features 64 is out of range"),
    (["sae", "features", "--sae", "{tmp}/sae_broken"], "cfg.json is not valid JSON"),
    (["sae", "eval", "--sae", "{tmp}/sae_junk"], "sae_weights.safetensors is not a safetensors file"),
    (["sae", "features", "--sae", "{tmp}/sae_transposed"], "W_dec is shape [576, 64], but cfg.json (d_in 576, d_sae 64) needs [64, 576]"),
    (["trace", "-t", "hi", "--layers", "3-1"], "the range 3-1 runs backwards; write it as 1-3"),
    (["trace", "-t", "hi", "--heads", ","], "--heads ',' names no head"),
    (["trace", "-t", ""], "a --text is empty"),
    (["trace", "--file", "{tmp}"], "is a folder; name a text file"),
    (["trace", "-t", "hi", "--out", "/proc/interp-out"], "for --out is not writable"),
    (["atlas", "--sections", ","], "--sections ',' names no section"),
    (["heads", "--n-texts", "100000"], "--n-texts 100000: this Python's reference documentation gives"),
    (["compare", "--n-texts", "100000"], "use at most"),
    (["ioi", "--out", "{tmp}/file.txt"], "is a file"),
    (["retrieval", "--lengths", "3"], "--lengths 3 is too short for a needle test"),
    (["sae", "train", "--layer", "3", "--corpus", "{tmp}/empty_corpus"], "no .txt or .md files there"),
    (["sae", "train", "--layer", "3", "--corpus", "{tmp}/blank_corpus"], "holds no text"),
    (["sae", "train", "--layer", "3", "--corpus", "{tmp}/garbage.txt"], "garbage.txt is not UTF-8 text (byte 0x80"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUTS, ids=[" ".join(a[:3]) for a, _ in BAD_INPUTS])
def test_every_command_refuses_bad_input_before_loading(args, expected, tmp_path, monkeypatch, capsys):
    import time

    import torch

    import interp.loading
    from interp.cli import main

    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")

    def no_load(*a, **kw):
        raise AssertionError("load_model was called before the arguments were checked")

    monkeypatch.setattr(interp.loading, "load_model", no_load)
    _sae_dirs(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "file.txt").write_text("a user's file")
    (tmp_path / "empty_corpus").mkdir()
    (tmp_path / "blank_corpus").mkdir()
    (tmp_path / "blank_corpus" / "a.txt").write_text("  \n\n ")
    (tmp_path / "garbage.txt").write_bytes(bytes(range(256)) * 8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    argv = [a.format(tmp=tmp_path) for a in args]
    if "--out" not in argv and args[:2] != ["sae", "train"]:
        argv += ["--out", str(out)]
    elif args[:2] == ["sae", "train"]:
        argv += ["--out", str(out / "sae")]
    capsys.readouterr()
    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("interp: error: ") and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "user data"
    assert (tmp_path / "file.txt").read_text() == "a user's file"
    assert seconds < 5, f"took {seconds:.1f} s: the check should come before any work"


def test_an_unexpected_failure_is_exit_1_with_one_line(tmp_path, monkeypatch, capsys):
    import interp.loading
    from interp.cli import main

    def broken(*a, **kw):
        raise RuntimeError("disk on fire\nsecond line of detail")

    monkeypatch.setattr(interp.loading, "load_model", broken)
    out = tmp_path / "out"
    code = main(["trace", "-t", "hi", "--out", str(out)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and lines == ["interp: failed: RuntimeError: disk on fire (set INTERP_DEBUG=1 for the traceback)"]
    assert not out.exists()
