"""hook_z SAEs on the real SmolLM2 (GQA: 9 query heads, 3 KV heads): the offline corpus, a tiny training
run on an early layer, direct feature attribution against the encoder's own hook, and the CLI."""
import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow
LAYER = 2


@pytest.fixture(scope="module")
def contexts(smollm2):
    from saes.corpus import token_contexts

    return token_contexts(smollm2, "bible", context_size=64, max_tokens=20_000)


@pytest.fixture(scope="module")
def sae_dir(smollm2, contexts, tmp_path_factory):
    from saes.train import train_sae

    return train_sae(smollm2, LAYER, tokens=2048, batch_tokens=256, corpus=contexts, expansion=2, k=8,
                     out=tmp_path_factory.mktemp("sae") / "L2", n_checkpoints=1, store_batch_prompts=8,
                     progress=False, lr=1e-3)


def test_corpus_is_real_text_packed_for_the_tokenizer(smollm2, contexts):
    assert contexts.shape == (313, 64) and contexts.dtype == torch.long
    text = smollm2.tokenizer.decode(contexts[:4].flatten().tolist())
    assert "God" in text and " the " in text
    # SmolLM2 prepends no BOS, so packed rows are plain corpus tokens; documents are joined with EOS
    assert (contexts == smollm2.tokenizer.eos_token_id).any()


def test_bible_corpus_has_over_two_million_tokens(smollm2):
    from saes.corpus import BIBLES, bible_documents

    chars = sum(len(d) for d in bible_documents())
    sample = " ".join(list(bible_documents())[:50])
    per_char = len(smollm2.tokenizer(sample)["input_ids"]) / len(sample)
    assert len(BIBLES) == 4 and chars * per_char > 2_000_000


def test_direct_feature_attribution_with_gqa_matches_the_encoder(smollm2, sae_dir):
    from saes.attribution import direct_feature_attribution
    from saes.evaluate import load_sae

    sae = load_sae(sae_dir)
    tokens = smollm2.to_tokens("When Mary and John went to the store, John gave a drink to")[0]
    name = f"blocks.{LAYER}.attn.hook_z"
    _, cache = smollm2.run_with_cache(tokens[None], names_filter=[name], stop_at_layer=LAYER + 1)
    _, sae_cache = sae.run_with_cache(cache[name][0, -1].flatten()[None])
    pre = sae_cache["hook_sae_acts_pre"][0]
    feature = int(pre.argmax())
    res = direct_feature_attribution(smollm2, sae, tokens, feature, layer=LAYER)
    assert res["by_head_source"].shape == (9, len(tokens))
    assert res["pre_activation"] == pytest.approx(float(pre[feature]), abs=1e-3)
    assert res["activation"] == pytest.approx(float(sae.encode(cache[name][0, -1].flatten()[None])[0, feature]), abs=1e-5)


def test_cli_eval_writes_a_report_and_rejects_a_bad_sae(smollm2, sae_dir, tmp_path, cache_dir, capsys):
    from interp.texts import reference_paragraphs

    corpus = tmp_path / "corpus.txt"  # small, so the command does not tokenise the whole default corpus
    corpus.write_text("\n\n".join(reference_paragraphs()[:80]))
    out = tmp_path / "eval"
    run = subprocess.run([sys.executable, "-m", "interp", "sae", "eval", "--sae", str(sae_dir), "--contexts", "2",
                          "--corpus", str(corpus), "--out", str(out), "--json"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout)
    assert doc["schema"] == "interp.sae_eval/1" and doc["layer"] == LAYER
    assert doc["metrics"]["l0"] == pytest.approx(8.0)
    # --corpus other than the training corpus: its first contexts, scored as TL's own hooked forwards score them
    from saes.corpus import token_contexts

    tokens = token_contexts(smollm2, str(corpus), context_size=64)[:2]
    assert doc["context_ids"] is None and doc["metrics"]["n_tokens"] == tokens.numel()
    name = f"blocks.{LAYER}.attn.hook_z"
    with torch.no_grad():
        clean = float(smollm2(tokens, return_type="loss"))
        zero = float(smollm2.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(name, lambda z, hook: z * 0)]))
    assert doc["metrics"]["ce_loss_without_sae"] == pytest.approx(clean, rel=1e-4)
    assert doc["metrics"]["ce_loss_with_ablation"] == pytest.approx(zero, rel=1e-4)
    assert (out / "sae_eval.html").is_file()

    # the bad-input path in-process: a second interpreter start costs a minute on a loaded machine
    from interp.cli import main

    code = main(["sae", "features", "--sae", str(tmp_path / "nothing"), "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 2 and "not an SAE directory" in err and "Traceback" not in err
    assert not (tmp_path / "f").exists()


def test_atlas_section_evaluates_the_found_sae_on_the_atlas_texts(smollm2, sae_dir, monkeypatch):
    """The atlas section renders sae_eval_analysis on the atlas's texts packed into the SAE's contexts; its
    JSON carries the config and the head table of the SAE's layer, which the head atlas joins."""
    from dataclasses import asdict

    from interp.head_atlas import head_tables_in
    from interp.texts import reference_paragraphs
    from saes.evaluate import SAEEvalConfig
    from saes.report import atlas_section

    monkeypatch.setenv("INTERP_SAE", str(sae_dir))
    part = atlas_section(smollm2, {"texts": reference_paragraphs()[:40], "progress": False})
    body = part["json"]
    assert body["config"] == asdict(SAEEvalConfig(contexts=8)) and body["evaluated_on"] == "the given texts"
    assert body["layer"] == LAYER and body["context_ids"] is None and body["metrics"]["l0"] == pytest.approx(8.0)
    assert body["metrics"]["n_tokens"] == 8 * 64
    table = head_tables_in(body)["heads"]
    assert table.df["label"].tolist() == [f"L{LAYER}H{h}" for h in range(9)]
    assert table.df["mean_share"].sum() == pytest.approx(1.0, abs=1e-6)
