"""A pipeline run's config from the pipeline's parameters: the one map from parameter names to config keys.

The components resolve their config here, and ``pipeline.py`` resolves it here too before a run starts, so a wrong
preset, parameter value or override fails in seconds with the config's own message instead of inside a step.
"""

from __future__ import annotations

from clipcite.config import Config, ConfigError, load_config

CONFIG_PARAMETERS = {
    "shots": "splits.shots",
    "seed": "seed",
    "arch": "model.arch",
    "pretrained": "model.pretrained",
    "method": "train.method",
}


def run_config(config: str, overrides: dict, **parameters: object) -> Config:
    """The preset or YAML ``config``, then the named pipeline ``parameters`` (keys of ``CONFIG_PARAMETERS``; ""
    keeps the preset's value), then ``overrides`` (dotted config keys), which win."""
    unknown = sorted(set(parameters) - set(CONFIG_PARAMETERS))
    if unknown:
        raise ConfigError(f"pipeline parameters {unknown} are not config values ({', '.join(CONFIG_PARAMETERS)})")
    if not isinstance(overrides, dict):
        raise ConfigError(
            f'overrides must be a JSON object of dotted keys, e.g. {{"train.epochs": 5}}; got {overrides!r}'
        )
    chosen = {CONFIG_PARAMETERS[name]: value for name, value in parameters.items()}
    return pipeline_config(config, chosen, overrides)


def pipeline_config(config: str, parameters: dict, overrides: dict) -> Config:
    """A pipeline run's config: the preset, then its named parameters ("" keeps the preset's value), then the
    free-form ``overrides`` (dotted keys), which win. Every component that needs the config resolves it here."""
    chosen = [(key, value) for key, value in parameters.items() if value != ""]
    return load_config(config, [*chosen, *overrides.items()])
