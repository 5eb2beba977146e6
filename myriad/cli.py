"""The ``myriad`` command line. Sub-commands live in :mod:`myriad.commands` and load lazily."""

from __future__ import annotations

import importlib
import sys

import click

from myriad import __version__

#: command name -> "module:attribute" of a click command; imported only when run or listed in --help.
COMMANDS = {
    "experts": "myriad.commands.experts:experts_command",
    "check-backbone": "myriad.commands.check_backbone:check_backbone_command",
    "eval": "myriad.commands.eval:eval_command",
    "make-devset": "myriad.commands.make_devset:make_devset_command",
    "model-info": "myriad.commands.model_info:model_info_command",
    "train": "myriad.commands.train:train_command",
    "inspect": "myriad.commands.inspect:inspect_command",
    "fit": "myriad.commands.fit:fit_command",
    "profile": "myriad.commands.profile:profile_command",
    "serve": "myriad.commands.serve:serve_command",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._resolve(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._resolve(cmd_name)

    @staticmethod
    def _resolve(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="myriad")
def cli() -> None:
    """Myriad: industrial anomaly detection with vision experts and a multimodal model."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``myriad`` console script: MyriadErrors print as one line, exit 1; MyriadWarnings print as
    one line (``Warning: ...``) and the command goes on."""
    import warnings

    from myriad.errors import MyriadError, MyriadWarning

    plain = warnings.formatwarning

    def one_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
        if issubclass(category, MyriadWarning):
            return f"Warning: {message}\n"
        return plain(message, category, *args, **kwargs)  # type: ignore[arg-type]

    warnings.formatwarning = one_line  # type: ignore[assignment]

    try:
        cli.main(args=argv, prog_name="myriad", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except MyriadError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
