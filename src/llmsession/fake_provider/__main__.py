"""``python -m llmsession.fake_provider``: the ``llmsession fake-provider`` command."""

from llmsession.fake_provider.runner import fake_provider_command

if __name__ == "__main__":
    fake_provider_command(prog_name="python -m llmsession.fake_provider")
