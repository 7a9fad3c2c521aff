"""What diffusers' own pipeline suites promise of a pipeline class, checked on ours with the gate off and on.

Written here in our words, after reading diffusers' ``PipelineTesterMixin`` (``tests/pipelines/``): callback
tensor inputs, batch consistency, ``num_images_per_prompt``, attention slicing, tooling that finds classes
by name. Save/load, ``from_pipe``, the signature and the CFG cut-off callbacks are in test_gate_runtime.py
and test_gate_loop.py.
"""

import diffusers
import pytest
import torch

from common.tiny import tiny_sd_components, tiny_sdxl_components
from SD_1_5.pipeline import TgateStableDiffusionPipeline
from SDXL.pipeline import TgateStableDiffusionXLPipeline
from tests.tgate_checks import pipeline_is_stock, quiet

GATES = [None, 2]  # gate off, gate on (4 steps)
FAMILIES = {"sd": (TgateStableDiffusionPipeline, tiny_sd_components),
            "sdxl": (TgateStableDiffusionXLPipeline, tiny_sdxl_components)}


@pytest.fixture(params=list(FAMILIES))
def pipe(request):
    tgate_class, make = FAMILIES[request.param]
    return quiet(tgate_class(**make(seed=0)))


def run(pipe, prompt="a coral reef", seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=4, generator=generator, output_type="latent", **kwargs).images


@pytest.mark.parametrize("gate", GATES)
def test_callbacks_get_every_declared_tensor_and_their_changes_reach_the_loop(pipe, gate):
    seen = []

    def callback(pipeline, index, timestep, tensors):
        seen.append(set(tensors))
        if index == 1:  # a change made by the callback is what the loop continues from
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    latents = run(pipe, gate_step=gate, callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert seen == [set(pipe._callback_tensor_inputs)] * 4
    zeroed = run(pipe, gate_step=gate, callback_on_step_end=lambda p, i, t, k: {
        **k, "latents": torch.zeros_like(k["latents"]) if i == 1 else k["latents"]},
        callback_on_step_end_tensor_inputs=["latents"])
    assert torch.equal(latents, zeroed)
    assert not torch.equal(latents, run(pipe, gate_step=gate))


@pytest.mark.parametrize("gate", GATES)
def test_a_batch_of_prompts_equals_each_prompt_alone(pipe, gate):
    prompts = ["a coral reef", "a red bus"]
    generators = [torch.Generator().manual_seed(seed) for seed in (3, 4)]
    together = pipe(prompts, num_inference_steps=4, generator=generators, output_type="latent", gate_step=gate).images
    alone = [run(pipe, prompt, seed=seed, gate_step=gate) for prompt, seed in zip(prompts, (3, 4))]
    assert torch.allclose(together, torch.cat(alone), atol=1e-4)


@pytest.mark.parametrize("gate", GATES)
def test_num_images_per_prompt(pipe, gate):
    latents = run(pipe, ["a coral reef", "a red bus"], num_images_per_prompt=3, gate_step=gate)
    assert latents.shape[0] == 6
    assert not torch.equal(latents[0], latents[1])  # each image its own noise


@pytest.mark.parametrize("gate", GATES)
def test_attention_slicing_changes_nothing(pipe, gate):
    plain = run(pipe, gate_step=gate)
    pipe.enable_attention_slicing(slice_size=1)
    assert torch.allclose(run(pipe, gate_step=gate), plain, rtol=1e-4, atol=1e-4)
    pipe.disable_attention_slicing()
    assert pipeline_is_stock(pipe)


def test_classes_are_found_by_name_where_diffusers_tooling_looks():
    for tgate_class, _ in FAMILIES.values():
        assert getattr(diffusers, tgate_class.__name__) is tgate_class
        assert getattr(diffusers.pipelines, tgate_class.__name__) is tgate_class
