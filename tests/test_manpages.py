"""The man pages stay true to the code: vmem-agent(8) to the click commands, vmem-agent.toml(5)
to the config loader's keys.

The pages are hand-written troff (packaging/man/). These tests read their source with a
small parser for the few macros the pages use, and compare it with click's own view of
the CLI (every command, option, argument, metavar and choice that `--help` shows), with
config.KEYS, the exit codes, the signals the daemon handles and the paths it uses. A change
on either side that the other does not follow fails here, with the difference in the message.
"""

from __future__ import annotations

import inspect
import re
import shutil
import signal
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from tests.helpers import PROJECT_ROOT
from vmem_agent import errors, paths
from vmem_agent.cli.commands import main
from vmem_agent.daemon.config import KEYS
from vmem_agent.daemon.loop import HANDLED_SIGNALS

MAN_DIR = PROJECT_ROOT / "packaging" / "man"
AGENT_PAGE = MAN_DIR / "vmem-agent.8"
CONFIG_PAGE = MAN_DIR / "vmem-agent.toml.5"
PROGRAM = "vmem-agent"
#: Where the package installs the unit (packaging/debian/vmem-agent.install).
UNIT_PATH = "/lib/systemd/system/vmem-agent.service"


# -- a reader for the troff the pages use -------------------------------------------------------


def plain(text: str) -> str:
    """troff text without escapes: \\- is a hyphen, fonts are dropped, \\(dq is a quote."""
    text = re.sub(r"\\f[BIRP]", "", text)
    return text.replace("\\-", "-").replace("\\(dq", '"').replace("\\(<=", "<=").replace("\\(mu", "x")


TROFF_ARGUMENT = re.compile(r'"((?:[^"]|"")*)"|(\S+)')


def macro_args(line: str) -> list[str]:
    """The arguments of a macro line, as plain text: separated by spaces, or in double quotes."""
    rest = line.split(None, 1)[1] if " " in line else ""
    return [plain(quoted.replace('""', '"') if quoted or not bare else bare)
            for quoted, bare in TROFF_ARGUMENT.findall(rest)]


@dataclass
class Section:
    """A .SH section, its .SS subsections, and the tag lines of its .TP entries."""

    lines: list[str] = field(default_factory=list)
    subsections: dict[str, "Section"] = field(default_factory=dict)

    def tags(self) -> list[str]:
        """The line after each .TP (the entry's tag), as plain text, here and in subsections."""
        own = [plain(" ".join(macro_args(self.lines[i + 1])) if self.lines[i + 1].startswith(".")
                     else self.lines[i + 1])
               for i, line in enumerate(self.lines[:-1]) if line == ".TP"]
        return own + [tag for sub in self.subsections.values() for tag in sub.tags()]

    def first_paragraph_bold(self) -> set[str]:
        """The commands in bold before the first .TP: those a shared OPTIONS section is for."""
        words = set()
        for line in self.lines:
            if line == ".TP":
                break
            if line.startswith((".B ", ".BR ")):
                words.add(macro_args(line)[0])
        return words & set(main.commands)


def read_page(path: Path) -> dict[str, Section]:
    sections: dict[str, Section] = {}
    current = sub = None
    for line in path.read_text().splitlines():
        if line.startswith('.\\"'):
            continue
        if line.startswith(".SH "):
            current = sections.setdefault(" ".join(macro_args(line)), Section())
            sub = None
        elif line.startswith(".SS ") and current is not None:
            sub = current.subsections.setdefault(macro_args(line)[0].split()[0], Section())
        elif current is not None:
            (sub or current).lines.append(line)
    return sections


@dataclass(frozen=True)
class Synopsis:
    options: dict[frozenset[str], str | None]  # option names -> argument (None for a flag)
    arguments: list[tuple[str, bool]]  # (metavar, required)


def synopses(section: Section) -> dict[str, Synopsis]:
    """`.SY vmem-agent CMD` ... `.YS` blocks: the command ("" for the program) and what it takes."""
    found: dict[str, Synopsis] = {}
    name = None
    for line in section.lines:
        if line.startswith(".SY "):
            words = macro_args(line)[0].split()
            assert words[0] == PROGRAM, line
            name = " ".join(words[1:])
            assert name not in found, f"two synopses for {name!r}"
            found[name] = Synopsis({}, [])
        elif line == ".YS":
            name = None
        elif name is not None and line.startswith(".OP "):
            names, *argument = macro_args(line)
            found[name].options[frozenset(names.split("|"))] = argument[0] if argument else None
        elif name is not None and line.startswith(".I "):
            found[name].arguments.append((macro_args(line)[0], True))
        elif name is not None and line.startswith(".RI [ "):
            found[name].arguments.append((macro_args(line)[1], False))
    return found


OPTION_WORD = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)")


def tag_options(tags: list[str]) -> set[str]:
    return {word for tag in tags for word in OPTION_WORD.findall(tag)}


# -- click's view of the CLI ----------------------------------------------------------------------


def program_context() -> click.Context:
    return click.Context(main, info_name=PROGRAM, **main.context_settings)


def command_context(name: str) -> click.Context:
    if not name:
        return program_context()
    return click.Context(main.commands[name], info_name=name, parent=program_context())


def command_params(name: str) -> list[click.Parameter]:
    """The parameters `vmem-agent [NAME] --help` shows, help option included."""
    context = command_context(name)
    return context.command.get_params(context)


def shown_metavar(param: click.Parameter, context: click.Context) -> str:
    """The metavar exactly as --help prints it, without the brackets click puts around
    choices and optional arguments. (click 8.2 passes the context; Debian 12 has 8.1.)"""
    if "ctx" in inspect.signature(param.make_metavar).parameters:
        shown = param.make_metavar(context)
    else:
        shown = param.make_metavar()
    return shown.strip("[]{}")


def option_argument(option: click.Option, context: click.Context) -> str | None:
    """What --help shows after the option: its metavar or its choices; None for a flag."""
    if option.is_flag or option.count:
        return None
    return shown_metavar(option, context)


def click_synopsis(name: str, with_help: bool) -> Synopsis:
    context = command_context(name)
    params = command_params(name)
    options = {frozenset(p.opts + p.secondary_opts): option_argument(p, context)
               for p in params if isinstance(p, click.Option)
               if with_help or set(p.opts) != set(main.context_settings["help_option_names"])}
    arguments = [(shown_metavar(p, context), p.required) for p in params if isinstance(p, click.Argument)]
    return Synopsis(options, arguments)


def all_options() -> dict[str, set[str]]:
    """Every option name, with the commands ("" for the program) that take it."""
    taken: dict[str, set[str]] = {}
    for name in ["", *main.commands]:
        for option in click_synopsis(name, with_help=not name).options:
            for word in option:
                taken.setdefault(word, set()).add(name)
    return taken


# -- vmem-agent(8) ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_page() -> dict[str, Section]:
    return read_page(AGENT_PAGE)


def test_the_synopsis_has_exactly_the_commands_and_the_program(agent_page):
    assert set(synopses(agent_page["SYNOPSIS"])) == {"", *main.commands}


@pytest.mark.parametrize("name", ["", *main.commands])
def test_each_synopsis_lists_exactly_the_options_and_arguments_of_help(agent_page, name):
    """Options, their metavars and choices, and positional arguments, both ways: a missing
    option and one that no longer exists both fail. -h/--help is listed once, for the
    program (every command takes it too: see the next test)."""
    documented = synopses(agent_page["SYNOPSIS"])[name]
    expected = click_synopsis(name, with_help=not name)
    assert documented.options == expected.options
    if name:
        assert documented.arguments == expected.arguments
    else:
        assert documented.arguments == [("command", True), ("argument", False)]


def test_every_command_takes_the_programs_help_option():
    help_names = set(main.context_settings["help_option_names"])
    for name in main.commands:
        options = click_synopsis(name, with_help=True).options
        assert frozenset(help_names) in options, name


def test_every_command_has_a_section_under_commands(agent_page):
    assert set(agent_page["COMMANDS"].subsections) == set(main.commands)


def test_every_option_is_described_where_its_command_is(agent_page):
    """Each option of a command has an entry (.TP) in that command's subsection or in a shared
    OPTIONS section whose first paragraph names the command; every command a shared section
    names takes every option described there; no entry describes an option nobody takes."""
    commands = agent_page["COMMANDS"].subsections
    shared = {title: section for title, section in agent_page.items() if title.endswith("OPTIONS")}
    shared_for = {title: ({""} if title == "GENERAL OPTIONS" else section.first_paragraph_bold())
                  for title, section in shared.items()}
    taken = all_options()
    for title, section in shared.items():
        for option in tag_options(section.tags()):
            assert option in taken, f"{title}: {option} is no option"
            missing = shared_for[title] - taken[option]
            assert not missing, f"{title}: {option} is described for {sorted(missing)}, which do not take it"
    for name, sub in commands.items():
        for option in tag_options(sub.tags()):
            assert name in taken.get(option, set()), f"COMMANDS {name}: {option} is not an option of {name}"
    for option, names in taken.items():
        for name in names:
            own = tag_options(commands[name].tags()) if name else set()
            in_shared = any(name in shared_for[title] and option in tag_options(section.tags())
                            for title, section in shared.items())
            assert option in own or in_shared, f"{option} of {name or PROGRAM!r} is described nowhere"


def test_environment_lists_every_variable_with_its_option(agent_page):
    variables: dict[str, set[str]] = {}
    for name in ["", *main.commands]:
        for param in command_params(name):
            if isinstance(param, click.Option) and param.envvar:
                variables.setdefault(param.envvar, set()).update(param.opts)
    lines = agent_page["ENVIRONMENT"].lines
    documented = {}
    for i, line in enumerate(lines[:-2]):
        if line == ".TP":
            documented[macro_args(lines[i + 1])[0]] = set(OPTION_WORD.findall(plain(" ".join(macro_args(lines[i + 2])))))
    assert documented == variables


def test_exit_status_lists_every_exit_code(agent_page):
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    codes |= {128 + signal.SIGINT, 128 + signal.SIGTERM}
    assert {int(tag) for tag in agent_page["EXIT STATUS"].tags()} == codes


def test_signals_are_the_ones_the_daemon_handles(agent_page):
    handled = {s.name for s in HANDLED_SIGNALS} - {"SIGCHLD"}  # SIGCHLD: its own writer children
    documented = {word for tag in agent_page["SIGNALS"].tags() for word in re.findall(r"SIG[A-Z]+", tag)}
    assert documented == handled


def test_files_name_the_paths_the_code_and_the_package_use(agent_page):
    documented = set(agent_page["FILES"].tags())
    assert {paths.CONFIG_PATH, paths.RUNTIME_DIR + "/", f"{paths.STATE_DIR}/{paths.TARGET_FILE_NAME}",
            UNIT_PATH} <= documented
    install = (PROJECT_ROOT / "packaging" / "debian" / "vmem-agent.install").read_text()
    assert f"packaging/systemd/vmem-agent.service {UNIT_PATH.rsplit('/', 1)[0].lstrip('/')}/" in install


def project_version() -> str:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("page", [AGENT_PAGE, CONFIG_PAGE], ids=lambda p: p.name)
def test_page_header_names_the_projects_version(page):
    header = next(line for line in page.read_text().splitlines() if line.startswith(".TH "))
    assert macro_args(header)[3] == f"vmem-agent {project_version()}"


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
@pytest.mark.parametrize("page", [AGENT_PAGE, CONFIG_PAGE], ids=lambda p: p.name)
def test_page_renders_without_warnings(page):
    rendered = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(page)], capture_output=True,
                              text=True, env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
                              check=True)
    assert rendered.stderr == ""
    assert "NAME" in rendered.stdout and "SEE ALSO" in rendered.stdout


# -- vmem-agent.toml(5) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_keys_documented() -> dict[str, str]:
    """key -> the rest of its entry's tag (`= "auto" | "never"`, `= size`)."""
    tags = read_page(CONFIG_PAGE)["KEYS"].tags()
    return {tag.split()[0]: tag.split(None, 1)[1] for tag in tags}


def test_config_page_documents_exactly_the_keys_the_loader_accepts(config_keys_documented):
    assert set(config_keys_documented) == {key.name for key in KEYS}


def loader_choices(key) -> list[str] | None:
    """The values a key accepts when it is a choice, from the loader's own error message."""
    try:
        key.check("\0")
    except ValueError as exc:
        message = str(exc)
        return message.removeprefix("expected one of ").split(", ") if message.startswith("expected one of ") else None
    return None


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.name)
def test_config_page_lists_the_choices_of_each_choice_key(config_keys_documented, key):
    documented = re.findall(r'"([^"]*)"', config_keys_documented[key.name])
    assert documented == (loader_choices(key) or [])
