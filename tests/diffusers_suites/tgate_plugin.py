"""pytest plugin for ``run.py``: runs diffusers' own fast pipeline tests offline, on stock or TGATE classes.

Loaded with ``-p tgate_plugin`` (``run.py`` puts this folder and the repository root on ``PYTHONPATH``). The
environment picks the mode:

- ``TGATE_SUITES_MODE=stock``: diffusers' classes, as the suites ship (the baseline);
- ``TGATE_SUITES_MODE=off``: each test class's ``pipeline_class`` swapped for its TGATE class
  (``common.any_pipeline.tgate_class``: the family class where the repository has one, else one built), with
  TGATE's default ``gate_step=None``;
- ``TGATE_SUITES_MODE=on``: the same swap, with the default ``gate_step`` set to ``TGATE_SUITES_GATE`` (1: the
  fast tests run 2 steps, so one stock step, then the gate).

Offline stand-ins: the fast tests' ``get_dummy_components`` load tiny tokenizers, configs and one BERT encoder
from the hub (``hf-internal-testing/...``). ``from_pretrained`` of those ids returns tiny ones built in code
(``common/tiny.py``, ``common/tiny_dit.py``) with the sizes the tests' own models expect, in every mode alike.
Anything else the hub would give fails fast (``HF_HUB_OFFLINE=1``) and is reported as skipped with the reason
``needs hub``. Tests marked slow or nightly are deselected.
"""

from __future__ import annotations

import os
import re
import socket

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads it (run.py sets it too)
MODE = os.environ.get("TGATE_SUITES_MODE", "stock")
GATE = int(os.environ.get("TGATE_SUITES_GATE", "1"))
NEEDS_HUB = "needs hub"


class NeedsHub(OSError):
    """A test asked for a hub file this offline run has no stand-in for."""


# ---------------------------------------------------------------------------------------------- stand-ins
def _clip_tokenizer():
    from common.tiny import tiny_clip_tokenizer

    return tiny_clip_tokenizer(77)  # ids < 94: inside the tests' CLIP vocab (1000)


def _t5_tokenizer():
    from common.tiny import tiny_t5_tokenizer

    return tiny_t5_tokenizer()


def _t5_config():
    """hf-internal-testing/tiny-random-t5's sizes (d_model 32: the tests' caption / text widths), dropout off
    (the tests build the encoder from this config and never call ``eval()``)."""
    from transformers import T5Config

    return T5Config(vocab_size=1103, d_model=32, d_kv=8, d_ff=37, num_layers=5, num_decoder_layers=5, num_heads=4,
                    relative_attention_num_buckets=8, dropout_rate=0.0, eos_token_id=1, pad_token_id=0,
                    decoder_start_token_id=0, is_encoder_decoder=True, feed_forward_proj="relu")


def _gemma_tokenizer():
    from common.tiny_dit import tiny_gemma_tokenizer

    return tiny_gemma_tokenizer()


def _bert_tokenizer():
    from common.tiny_dit import tiny_bert_tokenizer

    return tiny_bert_tokenizer()


def _bert_model():
    """hf-internal-testing/tiny-random-BertModel's sizes (hidden 32: HunyuanDiT's ``cross_attention_dim``),
    random weights from a fixed seed without touching the test's random state (loading does not either)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=1124, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=512, type_vocab_size=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BertModel(config).eval()


TOKENIZERS = {
    "hf-internal-testing/tiny-random-clip": _clip_tokenizer,
    "hf-internal-testing/tiny-random-t5": _t5_tokenizer,
    "hf-internal-testing/dummy-gemma": _gemma_tokenizer,
    "hf-internal-testing/tiny-random-BertModel": _bert_tokenizer,
}
CONFIGS = {"hf-internal-testing/tiny-random-t5": _t5_config}
MODELS = {"hf-internal-testing/tiny-random-BertModel": _bert_model}


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells a repository


def _is_hub_id(name) -> bool:
    return isinstance(name, str) and HUB_ID.match(name) is not None and not os.path.exists(name)


def _patch(owner: type, table: dict) -> None:
    """Replace ``owner.from_pretrained`` (a classmethod) by one that serves ``table``'s ids offline and
    refuses other hub ids at once."""
    original = owner.__dict__["from_pretrained"].__func__

    def from_pretrained(cls, name=None, *args, **kwargs):
        if isinstance(name, str) and name in table:
            return table[name]()
        if _is_hub_id(name):
            raise NeedsHub(f"{NEEDS_HUB}: {cls.__name__}.from_pretrained({str(name)!r})")
        return original(cls, name, *args, **kwargs)

    owner.from_pretrained = classmethod(from_pretrained)


def _install_stand_ins() -> None:
    import diffusers
    import transformers
    from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    _patch(PreTrainedTokenizerBase, TOKENIZERS)
    _patch(AutoTokenizer, TOKENIZERS)
    _patch(PretrainedConfig, CONFIGS)
    _patch(AutoConfig, CONFIGS)
    _patch(PreTrainedModel, MODELS)
    for auto_model in ("AutoModel", "AutoModelForCausalLM", "AutoProcessor", "AutoImageProcessor",
                       "AutoFeatureExtractor"):
        owner = getattr(transformers, auto_model, None)
        if owner is not None and "from_pretrained" in owner.__dict__:
            _patch(owner, {})
    # diffusers' loaders of hub ids (pipelines, models, schedulers): nothing offline to stand in
    for owner in (diffusers.DiffusionPipeline, diffusers.ModelMixin, diffusers.SchedulerMixin):
        if "from_pretrained" in owner.__dict__:
            _patch(owner, {})


# --------------------------------------------------------------------------------------------- the swap
SWAPPED: dict[str, str] = {}  # stock class name -> TGATE class name, or the refusal


def _swap(test_class: type) -> None:
    stock = test_class.__dict__.get("_tgate_stock_pipeline_class") or getattr(test_class, "pipeline_class", None)
    if not isinstance(stock, type):
        return
    import diffusers
    from common.any_pipeline import tgate_class

    if not issubclass(stock, diffusers.DiffusionPipeline):
        return
    try:
        tgate = tgate_class(stock)
    except (TypeError, ValueError) as refusal:
        SWAPPED[stock.__name__] = f"kept stock: {refusal}"
        return
    test_class._tgate_stock_pipeline_class = stock
    test_class.pipeline_class = tgate
    SWAPPED[stock.__name__] = tgate.__name__


def _is_slow(item) -> bool:
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", ""))
        condition = mark.args[0] if mark.args else mark.kwargs.get("condition", False)
        if condition is True and ("slow" in reason or "nightly" in reason):
            return True
    for owner in (getattr(item, "cls", None), getattr(item, "function", None)):
        why = str(getattr(owner, "__unittest_skip_why__", "")) if getattr(owner, "__unittest_skip__", False) else ""
        if "slow" in why or "nightly" in why:
            return True
    return False


# ---------------------------------------------------------------------------------------------- hooks
def pytest_configure(config):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    socket.setdefaulttimeout(5)  # a URL a test fetches (load_image) fails fast instead of hanging
    torch.set_num_threads(int(os.environ.get("TGATE_SUITES_THREADS", "1")))
    _install_stand_ins()
    if MODE == "on":
        from common import pipeline

        pipeline.TGATE_PARAMETERS["gate_step"] = GATE
    elif MODE not in ("stock", "off"):
        raise pytest.UsageError(f"TGATE_SUITES_MODE must be stock, off or on, not {MODE!r}")


def pytest_collection_modifyitems(config, items):
    slow = [item for item in items if _is_slow(item)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in slow]
    if MODE != "stock":
        for test_class in {item.cls for item in items if getattr(item, "cls", None) is not None}:
            _swap(test_class)


def _hub_reason(error: BaseException | None) -> str | None:
    """Why ``error`` (or an exception it came from) is a missing hub file or URL, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = type(error).__name__
        text = str(error)
        if isinstance(error, NeedsHub):
            return text
        if name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "RepositoryNotFoundError",
                    "GatedRepoError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "MaxRetryError",
                    "NameResolutionError", "ConnectError") or isinstance(error, (socket.timeout, socket.gaierror)):
            return f"{NEEDS_HUB}: {name}: {text.splitlines()[0][:200] if text else ''}"
        if isinstance(error, OSError) and ("HF_HUB_OFFLINE" in text or "huggingface.co" in text
                                           or "offline mode" in text or "couldn't connect" in text):
            return f"{NEEDS_HUB}: {text.splitlines()[0][:200]}"
        error = error.__cause__ or error.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        reason = _hub_reason(call.excinfo.value)
        if reason is not None:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {reason}")


def pytest_terminal_summary(terminalreporter):
    if MODE != "stock" and SWAPPED:
        terminalreporter.write_line(f"TGATE mode {MODE}" + (f" (gate_step={GATE})" if MODE == "on" else ""))
        for stock, tgate in sorted(SWAPPED.items()):
            terminalreporter.write_line(f"  {stock} -> {tgate}")
