"""File names of what the steps hand each other, in one torch-free place (steps that only read them, such as
register, must not import the model code to learn a file name)."""

META_FILE = "clipcite.json"  # beside a saved model's open_clip files: identity, prompts, temperature, config
WEIGHTS_FILE = "open_clip_model.safetensors"  # a saved model is an open_clip local-dir folder: these two files
OPENCLIP_CONFIG_FILE = "open_clip_config.json"
MODEL_ARTIFACT = "model"  # the weights folder (a saved model's folder) among the served pyfunc model's artifacts
HEAD_FILE = "class_head.safetensors"  # a linear probe's trained class weights, beside the (zero-shot) weights
VALIDATION_FILE = "validation.json"  # a candidate's validation scores (validate), what select reads
SELECTION_FILE = "selection.json"  # the candidates and the winner (select), what register and the card read
LORA_FILE = "lora_adapter.safetensors"  # a LoRA run's adapter alone (the weights file holds it merged)
