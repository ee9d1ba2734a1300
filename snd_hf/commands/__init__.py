"""The options of each `snd` subcommand, one light module per command.

These modules import neither torch nor transformers (nor anything that does), so `snd --help`,
every ``snd COMMAND --help`` and every argument error answer at once; the command's work runs in the
module that owns the feature (``snd_hf.cli.COMMANDS`` names both). A default shown here that a
heavy module owns too (the field fit's settings, the evaluation presets) is checked against its
owner by ``tests/test_cli.py``.
"""
