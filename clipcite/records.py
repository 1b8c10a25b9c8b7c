"""File names of what the steps hand each other, and the names of the steps' tasks, in one torch-free place (steps
that only read them, such as register, must not import the model code to learn a file name; tracking reads the
step names back without importing the steps)."""

META_FILE = "clipcite.json"  # beside a saved model's open_clip files: identity, prompts, temperature, config
WEIGHTS_FILE = "open_clip_model.safetensors"  # a saved model is an open_clip local-dir folder: these two files
OPENCLIP_CONFIG_FILE = "open_clip_config.json"
MODEL_ARTIFACT = "model"  # the weights folder (a saved model's folder) among the served pyfunc model's artifacts
HEAD_FILE = "class_head.safetensors"  # a linear probe's trained class weights, beside the (zero-shot) weights
VALIDATION_FILE = "validation.json"  # a candidate's validation scores (validate), what select reads
SELECTION_FILE = "selection.json"  # the candidates and the winner (select), what register and the card read
LORA_FILE = "lora_adapter.safetensors"  # a LoRA run's adapter alone (the weights file holds it merged)

# Steps with a task per candidate method or per domain, named ``<step>-<method>`` / ``<step>-<domain>``.
QUALIFIED_STEPS = ("finetune", "validate", "evaluate")


def step_name(step: str, qualifier: str = "") -> str:
    """The name of one task of ``step`` (its MLflow run, its KFP display name, its checkpoint folder): ``step``, or
    ``<step>-<qualifier>`` for one of several: ``finetune-lora`` and ``validate-lora`` train and score the
    candidate method lora, ``evaluate-photo`` evaluates the domain photo."""
    return f"{step}-{qualifier}" if qualifier else step


def split_step_name(name: str) -> tuple[str, str]:
    """(step, qualifier) of a name :func:`step_name` made: ``("finetune", "lora")``, ``("finetune", "")``; a step
    whose own name has a hyphen (``cache-teacher``) is not split."""
    for step in QUALIFIED_STEPS:
        if name.startswith(f"{step}-"):
            return step, name[len(step) + 1 :]
    return name, ""
