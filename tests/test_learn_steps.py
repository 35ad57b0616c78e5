"""The training itself: its stops on a nan or exploding loss and on a time budget, the learning-rate
schedule fitted to the budget, reviewers trained on as many passes as fails, a code writer learning
from the lines its fix changed, the loss and gradient checkpointing on small real architectures,
the learn loop end to end on the toy house task, and a writer's promotion hint."""

from __future__ import annotations

import json
import warnings

import pytest
from helpers import HOUSE_TAG, house_artifacts, house_registry, quick_options

from pantheon.core.learn.files import read_learn, training_root

# -- the training's budget and its stops ---------------------------------------------------------


def test_check_loss_stops_on_nan_and_on_an_explosion():
    from pantheon.trainer.train import TrainingError, TrainOptions, check_loss

    options = TrainOptions(lr=0.01)
    check_loss(2.0, 1, [], options)
    check_loss(7.0, 6, [2.0, 2.1, 1.9, 2.2], options)  # under 4x
    with pytest.raises(TrainingError, match=r"became nan at step 3: the training diverged"):
        check_loss(float("nan"), 3, [2.0], options)
    with pytest.raises(TrainingError, match=r"exploded at step 9: 9.*over 4 times"):
        check_loss(9.0, 9, [2.0, 2.1, 1.9, 2.2], options)
    with pytest.raises(TrainingError, match="cannot work: rank 0"):
        TrainOptions(rank=0)


def test_a_time_budget_stops_training_and_keeps_the_best_checkpoint(tmp_path, smollm2_path):
    from pantheon.trainer.train import start, train

    root = house_artifacts(tmp_path, HOUSE_TAG)
    folder = start(root, "house.tag", smollm2_path, quick_options(max_minutes=0.002, eval_every=1))
    rows = []
    state = train(root, folder, on_step=rows.append)
    assert state.status == "done" and state.step < state.steps
    assert state.stopped.startswith("the time budget of 0.002 min ran out at step ")
    assert rows[-1].eta_s == 0 and rows[-1].heldout_loss is not None
    assert (root / state.gguf).exists(), "what it trained in its budget is the adapter"
    assert state.best_step == min(state.heldout_curve, key=lambda c: c[1])[0]


def test_a_time_budget_fits_the_learning_rate_schedule_to_the_steps_it_allows():
    """410 steps of data, 100 s of budget at 2 s a step: the warm-up and the decay span the 50
    steps the budget allows, not the 410 (which would stop the training part way up its
    warm-up); without a budget the schedule is transformers' cosine with warm-up."""
    torch = pytest.importorskip("torch")
    from transformers import get_cosine_schedule_with_warmup

    from pantheon.trainer.steps import Horizon

    budgeted = Horizon(410, 0.1, budget_s=100)
    budgeted.update(2, pace_s=2.0, spent_s=4.0)
    assert budgeted.steps == 50
    assert budgeted.factor(2) == pytest.approx(0.4) and budgeted.factor(5) == 1.0
    assert 0 < budgeted.factor(40) < 0.2 and budgeted.factor(50) == 0.0
    budgeted.update(49, pace_s=2.0, spent_s=99.0)
    assert budgeted.steps == 50  # at least the next step, never past the data's
    budgeted.update(3, pace_s=0.01, spent_s=6.0)
    assert budgeted.steps == 410

    whole = Horizon(410, 0.1)
    whole.update(2, pace_s=2.0, spent_s=4.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_cosine_schedule_with_warmup(opt, 41, 410).lr_lambdas[0]
    for step in (0, 1, 20, 41, 100, 300, 409, 410):
        assert whole.factor(step) == pytest.approx(reference(step))


def test_a_reviewer_trains_on_as_many_passes_as_fails():
    from pantheon.trainer.steps import balance_labels

    labelled = [{"run": f"r{i}", "label": i % 5 == 0} for i in range(20)]  # 4 passes, 16 fails
    got = balance_labels(labelled, seed=3)
    assert got[:20] == labelled  # every example once, then the rarer verdict again
    assert sum(e["label"] for e in got) == sum(not e["label"] for e in got) == 16
    assert {e["run"] for e in got if e["label"]} == {"r0", "r5", "r10", "r15"}
    assert balance_labels(labelled, seed=3) == got  # the same on every run
    # a writer's examples, and a set of one verdict, are left as they are
    writer = [{"run": "a"}, {"run": "b"}]
    assert balance_labels(writer) == writer
    fails = [{"run": "a", "label": False}]
    assert balance_labels(fails) == fails


def test_a_diverging_training_stops_with_the_reason(tmp_path, smollm2_path):
    from pantheon.trainer.train import TrainingError, start, train

    root = house_artifacts(tmp_path, HOUSE_TAG)
    folder = start(
        root, "house.tag", smollm2_path, quick_options(lr=0.9, max_steps=10, explode=1.5)
    )
    with pytest.raises(TrainingError, match=r"diverged|exploded") as info:
        train(root, folder)
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == "failed" and "learning rate 0.9" in state["error"]
    assert str(info.value) in state["error"] and state["gguf"] is None


HEAD = '''"""Small numeric helpers."""


def is_even(n):
    """Whether n is even."""
    return n % 2 == 0


def clamp(x, lo, hi):
    """x, limited to the range lo..hi."""
'''
FILE = HEAD + "    return max(lo, x)\n"
FIX = f"```python\n{HEAD}    return min(hi, max(lo, x))\n```"


def test_a_code_writer_learns_from_the_lines_its_fix_changed_not_the_copied_ones(smollm2_path):
    from transformers import AutoTokenizer

    from pantheon.trainer.steps import encode, learnt, make_batch, new_line_spans

    messages = [
        {"role": "system", "content": "Fix the function. Reply with the whole file."},
        {"role": "user", "content": f"clamp.py:\n```python\n{FILE}```"},
        {"role": "assistant", "content": FIX},
    ]
    spans = new_line_spans(messages)
    assert [FIX[a:b] for a, b in spans] == ["    return min(hi, max(lo, x))\n"]
    tok = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    ids, n_prompt, keep = encode(tok, messages, 1024, spans)
    whole = encode(tok, messages, 1024)
    assert whole == (ids, n_prompt), "the same tokens; only what is learnt from differs"
    kept = tok.decode([t for t, k in zip(ids[n_prompt:], keep, strict=True) if k])
    assert "min(hi, max(lo, x))" in kept and "def clamp" not in kept
    assert keep[-1] and tok.eos_token in kept, "the end of the turn is learnt: it stops"
    assert learnt((ids, n_prompt, keep)) < learnt(whole) / 2
    labels = make_batch([(ids, n_prompt, keep)], 0, "cpu")["labels"][0].tolist()
    assert sum(x != -100 for x in labels) == sum(keep)
    # a reply that copies every line learns whole, never from nothing
    copy = [*messages[:2], {"role": "assistant", "content": f"```python\n{FILE}```"}]
    assert len(encode(tok, copy, 1024, new_line_spans(copy) or None)) == 2


def _tiny(kind: str):
    """A small random model of a real architecture, and a padded batch of two whose labels
    are partly masked, as a code writer's are."""
    import torch
    import transformers

    shape = dict(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    if kind == "qwen2":
        config = transformers.Qwen2Config(**shape, tie_word_embeddings=True)
    elif kind == "gemma2":  # its head caps the logits: the model's own loss is used
        config = transformers.Gemma2Config(**shape, head_dim=8, final_logit_softcapping=0.05)
    else:
        config = transformers.LlamaConfig(**shape)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ids = torch.randint(0, 300, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0  # the second is padded
    labels = ids.clone()
    labels[:, :10] = -100  # the prompt
    labels[0, 14:17] = -100  # copied lines
    labels[1, 18:] = -100
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma2"])
def test_the_loss_is_the_models_own_with_the_head_applied_only_where_it_learns(kind):
    pytest.importorskip("peft")
    import torch

    from pantheon.trainer.steps import reply_loss

    model, batch = _tiny(kind)
    with torch.no_grad():
        ours, theirs = reply_loss(model, batch), model(**batch).loss
    assert abs(float(ours) - float(theirs)) < 1e-5 * float(theirs)


def test_gradient_checkpointing_gives_the_same_gradients():
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model

    from pantheon.trainer.steps import enable_checkpointing, reply_loss

    def is_checkpointing(model) -> bool:
        new = hasattr(type(model), "is_activation_checkpointing")
        return bool(getattr(model, f"is_{'activation' if new else 'gradient'}_checkpointing"))

    grads = []
    for recompute in (False, True):
        base, batch = _tiny("llama")
        if recompute:
            enable_checkpointing(base)
        assert is_checkpointing(base) == recompute
        with warnings.catch_warnings():  # peft's use of a renamed transformers call
            warnings.simplefilter("ignore", FutureWarning)
            config = LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
            model = get_peft_model(base, config)
        torch.manual_seed(1)
        for name, p in model.named_parameters():  # B starts at zero: give A a gradient too
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        model.train()
        reply_loss(model, batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    plain, recomputed = grads
    assert plain.keys() == recomputed.keys() and plain
    for name, g in plain.items():
        assert torch.allclose(g, recomputed[name], rtol=1e-4, atol=1e-7), name
    assert any(float(g.abs().sum()) > 0 for g in plain.values())


def test_gradient_checkpointing_is_chosen_when_a_step_would_not_fit(monkeypatch):
    from types import SimpleNamespace

    from pantheon.trainer import steps
    from pantheon.trainer.options import TrainOptions

    qwen_05b = SimpleNamespace(
        hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_hidden_layers=24
    )
    step = steps.step_activations(qwen_05b, 2, 1536)
    assert step == 2 * steps.step_activations(qwen_05b, 1, 1536), "twice the batch, twice"
    monkeypatch.setattr(steps, "free_memory", lambda device: 2 * step)
    assert not steps.checkpointing_wanted(TrainOptions(batch=2, max_tokens=1536), qwen_05b)
    monkeypatch.setattr(steps, "free_memory", lambda device: step)
    assert steps.checkpointing_wanted(TrainOptions(batch=2, max_tokens=1536), qwen_05b)
    # the operator's choice wins either way
    wanted = TrainOptions(batch=2, max_tokens=1536, gradient_checkpointing=False)
    assert not steps.checkpointing_wanted(wanted, qwen_05b)
    monkeypatch.setattr(steps, "free_memory", lambda device: 100 * step)
    wanted = TrainOptions(batch=2, max_tokens=1536, gradient_checkpointing=True)
    assert steps.checkpointing_wanted(wanted, qwen_05b)


def test_code_writers_default_to_new_lines_and_the_others_to_the_whole_reply(tmp_path):
    from pantheon.trainer.train import is_code_writer

    assert is_code_writer("codegen") and not is_code_writer("doc.frontmatter")
    assert not is_code_writer("review.peer") and not is_code_writer("no.such.agent")


# -- the learn loop on the toy task, end to end ------------------------------------------------


def test_the_learn_loop_trains_judges_promotes_and_then_waits_for_new_data(tmp_path, smollm2_path):
    from pantheon.core.learn.files import MineStats
    from pantheon.trainer.loop import learn

    root = house_artifacts(tmp_path, HOUSE_TAG)
    stats = MineStats(agent="house.tag", examples=58, train=48, heldout=10, tasks=10)
    (training_root(root) / "house.tag" / "mine.json").write_text(stats.model_dump_json())
    lines = []
    kw = dict(options=quick_options(), registry=house_registry(), base=smollm2_path, fresh=False)
    run = learn(root, on_line=lines.append, **kw)
    [agent] = run.agents
    assert agent.action == "trained" and agent.promoted, lines
    ev = agent.evaluation
    assert ev["judged_by"] == "flow" and ev["adapter_passed"] > ev["base_passed"]
    assert agent.steps == 14 and agent.minutes is not None
    assert read_learn(root).agents[0].training == agent.training
    assert any("promoted" in line for line in lines)
    from pantheon.core.learn.files import read_registry

    assert read_registry(root).agents["house.tag"].adapter == agent.training
    # no new green example since: nothing to train
    [again] = learn(root, **kw).agents
    assert again.action == "skipped" and again.why.startswith("nothing new since")


def test_promoting_a_writer_trained_off_the_writers_model_says_how_a_night_uses_it():
    from pantheon.console.learn_cli import writers_hint as _writers_hint
    from pantheon.core.model.files import ModelStore

    small = str(ModelStore().path("qwen2.5-coder-0.5b"))
    hint = _writers_hint("codegen", small)
    assert hint is not None and "`pantheon night --code-model qwen2.5-coder-0.5b`" in hint
    assert _writers_hint("codegen", str(ModelStore().path("qwen2.5-coder-1.5b"))) is None
    assert _writers_hint("review.peer", small) is None  # the reviewers run on --model's server
