"""KFP v2 components: one thin shim per step (artifacts <-> paths, then ``clipcite.steps.<step>.run``)."""
