"""``python -m llmsession.fake_provider``: the ``llmsession fake-provider`` command."""

from llmsession.console import exit_if_server_extra_missing


def main() -> None:
    """Run the command; without the ``server`` extra, say how to install it."""
    try:
        # The command needs click and the server's modules (the server extra).
        from llmsession.fake_provider.runner import fake_provider_command
    except ModuleNotFoundError as error:
        exit_if_server_extra_missing(error, "python -m llmsession.fake_provider")
        raise
    fake_provider_command(prog_name="python -m llmsession.fake_provider")


if __name__ == "__main__":
    main()
