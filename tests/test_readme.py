"""The docs work as written (README.md and every docs/*.md page): the config table is the schema,
the Python examples run on a real (tiny) run, every shell command is run by a test or by CI,
the troubleshooting page quotes today's messages, and every relative link resolves."""

import dataclasses
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from conftest import ROOT, TINY_OVERRIDES, child_env

from tinyinduct.config import RunConfig

README = (ROOT / "README.md").read_text()
# The front page, then the pages it links to; commands and examples are collected from all.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAIN_COMMANDS = ("python scripts/train.py", "tinyinduct-train")
# Commands words that make a code span a shell command.
COMMAND_WORDS = ("pip", "python", "pytest", "wandb", "tinyinduct-train", "bash")
# The install block's first line: PyTorch's CPU build, before anything can pull a CUDA one.
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# Shell commands no test runs, with where they are exercised instead. Commands run by CI are
# checked against .ci/run below; keep this list short and true.
EXERCISED_ELSEWHERE = {
    CPU_TORCH: "CI has no network: .ci/run installs the same torch version from a local CPU "
    "wheel (test_install_is_two_commands_and_ci_runs_both checks that the versions agree)",
    "wandb login": "W&B's own command; needs an account, so nothing here can run it",
    "bash .ci/run": "is CI",
    "python scripts/bench.py --device cuda --out bench-gpu.json": "needs a CUDA GPU",
    'pip install "transformer-lens<4"': "the tl extra that .ci/run installs pins exactly this",
    'pip install -e ".[sweep]"': ".ci/run installs this extra",
    'pip install -e ".[llc]"': ".ci/run installs this extra",
    "python -m tinyinduct.analysis outputs/<date>/<time>": "test_analysis.py runs its main()",
    "python -m tinyinduct.analysis outputs/<date>/<time> --llc": "test_analysis.py runs its "
    "main() with --llc (test_llc.py: the LLC on a run folder)",
    "python -m tinyinduct.analysis outputs/<date>/<time> --llc --llc-snapshots 6":
    "test_analysis.py runs its main() with --llc --llc-snapshots",
    "python -m tinyinduct.replay multirun/<date>/<time> --metric mypkg.mymod:fn --out "
    "replay.jsonl": "test_replay_command.py runs this command on a sweep folder",
    "wandb sweep configs/wandb_sweep.yaml": "needs a W&B account; test_sweep.py builds and runs "
    "the command an agent runs from this YAML",
    "wandb agent <entity>/tinyinduct/<sweep id>": "needs a W&B account (see wandb sweep)",
    "python scripts/train.py -m +experiment=composition_sweep hydra/launcher=slurm "
    "hydra.launcher.partition=cpu hydra.launcher.account=myproject":
    "needs a SLURM cluster; test_sweep.py composes this launcher and runs submitit_local",
}


def page_texts() -> dict:
    """{path: text} of README.md and every docs/*.md page."""
    return {page: page.read_text() for page in PAGES}


def section(title: str, text: str = README) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def fenced_blocks(language: str, text: str | None = None) -> list:
    """The ```language blocks of `text`, or of every page."""
    texts = [text] if text is not None else list(page_texts().values())
    return [b for t in texts for b in re.findall(rf"^```{language}\n(.*?)^```", t,
                                                   flags=re.M | re.S)]


def shell_commands() -> list:
    """Every command line of every ```bash block, and every inline code span that is a command,
    on every page."""
    commands = []
    for block in fenced_blocks("bash"):
        block = re.sub(r"\\\n\s*", "", block)  # join continued lines
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"^(OMP_NUM_THREADS=\d+ )+", "", line)  # thread count: not the command
            if line and not line.startswith("#"):
                commands.append(line)
    for span in re.findall(r"`([^`\n]+)`", "\n".join(page_texts().values())):
        if span.split()[0] in COMMAND_WORDS and len(span.split()) > 1:
            commands.append(span.strip())
    return commands


def ci_commands() -> set:
    """The commands .ci/run runs, as a user would type them (no `python -m`, no `--quiet`, no
    `--durations=N`: CI's own report of the slowest tests)."""
    out = set()
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = [w for w in shlex.split(line)
                 if w != "--quiet" and not w.startswith("--durations=")]
        if words[:2] == ["python", "-m"]:
            words = words[2:]
        out.add(shlex.join(words))
    return out


def how_exercised(command: str) -> str | None:
    if command in EXERCISED_ELSEWHERE:
        return EXERCISED_ELSEWHERE[command]
    if " resume=" in command or "+experiment=" in command:
        return "test_readme_sweep_resume_and_compare_commands_run"
    if command.startswith(TRAIN_COMMANDS):
        return "test_readme_train_commands_run"
    if command.startswith("wandb sync"):
        return "test_wandb.py: the README's sync paths glob to a real run's W&B folder"
    if command in ("python -m tinyinduct", "python -m tinyinduct --help"):
        return "test_module_prints_where_to_start"
    if command.startswith("python scripts/reproduce.py"):
        return "test_reproduce.py: --quick end to end (every part), --check, --from-results"
    if command.startswith("wandb leet "):
        return "test_wandb_leet_shows_the_offline_run"
    if command.startswith("python -m tinyinduct.report.browser"):
        return "test_report_browser.py::test_screenshots_show_the_page_at_a_step"
    if command.startswith("python -m tinyinduct.report"):
        return "test_report.py::test_report_command_writes_pages_and_redraws"
    if command.startswith("python scripts/compare.py"):
        return "test_readme_sweep_resume_and_compare_commands_run"
    if command.startswith("python scripts/bench.py") and "cuda" not in command:
        return "test_bench.py::test_readme_bench_commands_run_in_quick_mode"
    if command == "pip install .":
        return "test_pip_install_dot_ships_configs_and_the_console_script"
    if shlex.join(shlex.split(command)) in ci_commands():
        return ".ci/run"
    return EXERCISED_ELSEWHERE.get(command)


def test_every_readme_command_is_exercised():
    commands = shell_commands()
    assert "pytest" in commands and any(c.startswith("wandb sync") for c in commands)
    assert any("scripts/compare.py" in c for c in commands)  # the docs pages are read too
    unexercised = [c for c in commands if how_exercised(c) is None]
    assert not unexercised, (
        f"commands in the docs no test or CI runs: {unexercised}. Run them in a test, add them "
        "to .ci/run, or list them in EXERCISED_ELSEWHERE in tests/test_readme.py")


def test_install_is_two_commands_and_ci_runs_both():
    """The install block: PyTorch's CPU build first (a bare torch requirement pulls a multi-GB
    CUDA build on a CPU-only Linux machine), then the two commands CI runs as written. CI cannot
    reach PyTorch's index, so it installs the same torch version from a local wheel."""
    block = re.search(r"```bash\n(.*?)```", section("Install"), flags=re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()]
    assert lines[0] == CPU_TORCH, lines
    version = re.match(r"pip install (torch==\S+) ", CPU_TORCH).group(1)
    assert f"pip install {version}" in ci_commands()  # .ci/run installs the same version
    assert len(lines[1:]) == 2 and all(how_exercised(line) == ".ci/run" for line in lines[1:]), \
        lines


# --- the configuration table ---------------------------------------------------------------


def schema_fields(cls=RunConfig, prefix: str = "") -> list:
    """Dotted names of every field of the schema, walking nested dataclasses."""
    names = []
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            names += schema_fields(type(value), f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def split_top_level(text: str) -> list:
    """Split on commas that are not inside brackets: `1e-2, [], ${a.b}` -> 3 items."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{" and 1 or 0
        depth -= char in "]}" and 1 or 0
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip().strip("`").strip() for item in items + [current]]


def table_defaults() -> dict:
    """`{dotted field: default text}` from the table of docs/configuration.md; `a.x`, `y` rows
    share `a.`."""
    out = {}
    table = (ROOT / "docs" / "configuration.md").read_text()
    for row in re.findall(r"^\| (`.*?) \| (.*?) \| .* \|$", table, flags=re.M):
        names = re.findall(r"`([^`]+)`", row[0])
        sect = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
        full = [names[0]] + [n if "." in n else sect + n for n in names[1:]]
        defaults = split_top_level(row[1])
        assert len(defaults) == len(full), f"{full} has defaults {defaults}"
        out.update(zip(full, defaults))
    return out


def parse_default(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"null": None, "true": True, "false": False, "[]": [], "{}": {}}.get(text, text)


def composed_defaults() -> dict:
    """What a run gets with no overrides: configs/ composed over the schema, unresolved."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tinyinduct.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train"), resolve=False)

    def flatten(node: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in node.items():
            if isinstance(value, dict) and value:  # an empty dict is a field's default
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    return flatten(cfg)


def test_config_table_lists_every_schema_field_with_its_default():
    table, fields, composed = table_defaults(), schema_fields(), composed_defaults()
    missing = [f for f in fields if f not in table]
    assert not missing, (f"fields missing from the table in docs/configuration.md: {missing} "
                         f"(defaults: {[composed.get(f) for f in missing]})")
    assert not set(table) - set(fields), f"table rows not in the schema: {set(table) - set(fields)}"
    for name in fields:
        assert parse_default(table[name]) == composed[name], (
            f"docs/configuration.md says {name} defaults to {table[name]!r}; a run gets "
            f"{composed[name]!r}")


# --- examples and commands, run -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run with the tiny sizes, trained in-process (no W&B)."""
    from tinyinduct import train
    from tinyinduct.config import run_config_from_dict

    overrides = dict(o.split("=", 1) for o in TINY_OVERRIDES)
    data = {}
    for key, value in overrides.items():
        sect, name = key.split(".") if "." in key else (None, key)
        target = data.setdefault(sect, {}) if sect else data
        target[name] = parse_default(value)
    data["model"]["d_vocab"] = data["data"]["d_vocab"]
    data["data"]["seq_len"] = data["model"]["n_ctx"]
    data["logger"] = {"mode": "disabled", "progress": False}
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(run_config_from_dict(data), run_dir)
    return run_dir


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**child_env(), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # end-to-end: real processes
def test_readme_python_examples_run_on_a_real_run(tiny_run, tmp_path):
    blocks = fenced_blocks("python")
    assert any("to_transformer_lens" in b for b in blocks)
    api = (ROOT / "docs" / "api.md").read_text()
    tl_example = re.search(r"```python\n(.*?)```", section("TransformerLens", api),
                           flags=re.S).group(1)
    assert len(tl_example.strip().splitlines()) <= 5
    for block in blocks:
        code = re.sub(r'load_run\("outputs/[^"]+"\)', f'load_run("{tiny_run}")', block)
        assert "load_run(" not in block or str(tiny_run) in code, block
        proc = run_python(code, tmp_path)
        assert proc.returncode == 0, f"{block}\n{proc.stderr}"
    png = tmp_path / "L1H0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_prints_where_to_start():
    proc = subprocess.run([sys.executable, "-m", "tinyinduct", "--help"], capture_output=True,
                          text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tinyinduct-train" in proc.stdout and "load_run" in proc.stdout
    configs = re.search(r"Configs: (\S+)", proc.stdout).group(1)
    assert (Path(configs) / "train.yaml").is_file()


def entry_point_command() -> list:
    """How the installed `tinyinduct-train` starts: pyproject's entry point, called."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["tinyinduct-train"].split(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = 'tinyinduct-train'; "
            f"from {module} import {func}; {func}()"]


@pytest.mark.slow  # end-to-end: real processes
def test_console_script_is_the_app_scripts_train_runs(tmp_path):
    import runpy

    import tinyinduct.cli

    script = runpy.run_path(str(ROOT / "scripts" / "train.py"), run_name="imported")
    assert script["main"] is tinyinduct.cli.main
    # the entry point trains from a folder that is not the checkout
    proc = subprocess.run([*entry_point_command(), f"hydra.run.dir={tmp_path / 'run'}",
                           *TINY_OVERRIDES, "train.steps=20", "logger.mode=disabled"],
                          cwd=tmp_path, capture_output=True, text=True, env=child_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "summary.json").is_file() and "Run dir:" in proc.stdout
    bad = subprocess.run([*entry_point_command(), "model.positional=rotary"], cwd=tmp_path,
                         capture_output=True, text=True, env=child_env(), timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid config: model.positional")


@pytest.mark.slow
def test_readme_train_commands_run(tmp_path):
    """Every training command in the docs, as written, shrunk by the tiny overrides."""
    commands = list(dict.fromkeys(  # a command written on several pages runs once
        c for c in shell_commands() if c.startswith(TRAIN_COMMANDS)
        and how_exercised(c) == "test_readme_train_commands_run"))
    assert not any(" resume=" in c or "+experiment=" in c for c in commands)
    assert len(commands) >= 3

    def run(i: int, command: str) -> subprocess.CompletedProcess:
        words = shlex.split(command)
        start = (["python", str(ROOT / "scripts" / "train.py")]
                 if words[0] == "python" else entry_point_command())
        rest = words[2:] if words[0] == "python" else words[1:]
        out = tmp_path / str(i)
        cmd = [*start[:1], *start[1:], *rest, *TINY_OVERRIDES, "train.steps=20",
               f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"]
        cmd[0] = sys.executable
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                              env=child_env(), timeout=600)

    # two at a time: a tiny run is mostly one core starting Python and importing torch
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(run, range(len(commands)), commands))
    for i, (command, proc) in enumerate(zip(commands, procs)):
        words, out = shlex.split(command), tmp_path / str(i)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        if "--help" in words:
            assert "model:" in proc.stdout
        elif "-m" in words:
            assert len(list(out.glob("*/summary.json"))) > 1, command
        else:
            assert (out / "summary.json").is_file(), command


@pytest.mark.slow
def test_pip_install_dot_ships_configs_and_the_console_script(tmp_path):
    """`pip install .` without the dependencies (they are this environment's): the wheel holds
    the configs and the entry point, and the installed copy trains from any folder."""
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--target", str(site), str(ROOT)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shipped = {p.relative_to(site / "tinyinduct" / "configs").as_posix()
               for p in (site / "tinyinduct" / "configs").rglob("*.yaml")}
    assert shipped == {p.relative_to(ROOT / "configs").as_posix()
                       for p in (ROOT / "configs").rglob("*.yaml")}
    entry = next(site.glob("tinyinduct-*.dist-info")) / "entry_points.txt"
    assert "tinyinduct-train = tinyinduct.cli:main" in entry.read_text()
    env = {**child_env(), "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-m", "tinyinduct"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=120)
    assert f"Configs: {site / 'tinyinduct' / 'configs'}" in where.stdout, where.stdout
    train = subprocess.run([*entry_point_command(), f"hydra.run.dir={tmp_path / 'run'}",
                            *TINY_OVERRIDES, "train.steps=20", "logger.mode=disabled"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "run" / "summary.json").is_file()


# A sweep command runs as written, shrunk: tiny sizes, 20 steps, one seed of one condition.
NARROW = {"seed": "0", "model.positional": "standard", "model.blocked_composition": "[]",
          "train.n_seeds": "1", "train.steps": "20"}


def overrides_of(command: str) -> tuple:
    """(program words, {key: value} overrides, other words) of a train command in the docs."""
    words = shlex.split(command)
    program = words[:2] if words[0] == "python" else words[:1]
    pairs, other = {}, []
    for word in words[len(program):]:
        if "=" in word and not word.startswith("-"):
            key, value = word.split("=", 1)
            pairs[key] = value
        else:
            other.append(word)
    return program, pairs, other


def train_argv(pairs: dict, other: list) -> list:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), *other,
            *(f"{k}={v}" for k, v in pairs.items())]


def run_ok(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=child_env(),
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{argv}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_readme_sweep_resume_and_compare_commands_run(tmp_path):
    """The docs' sweep commands (each shrunk to one tiny run of its grid), its resume commands
    (continuing a real run interrupted by Ctrl-C, with that command's own arguments) and its
    compare.py commands (on a sweep the first command made), run for real."""
    from conftest import start_train, wait_for_step

    commands = [c for c in shell_commands()
                if how_exercised(c) == "test_readme_sweep_resume_and_compare_commands_run"]
    sweeps = [c for c in commands if "+experiment=" in c]
    resumes = [c for c in commands if " resume=" in c]
    compares = [c for c in commands if c.startswith("python scripts/compare.py")]
    assert sweeps and resumes and compares
    tiny = dict(o.split("=", 1) for o in TINY_OVERRIDES)
    made = []
    for i, command in enumerate(sweeps):
        _, pairs, other = overrides_of(command)
        sweep_dir = tmp_path / f"sweep{i}"
        where = "hydra.sweep.dir" if "-m" in other else "hydra.run.dir"  # a single experiment run
        pairs.update({**tiny, **NARROW, where: str(sweep_dir)})
        run_ok(train_argv(pairs, other), tmp_path)
        assert list(sweep_dir.rglob("summary.json")), command
        made.append(sweep_dir)
    for i, command in enumerate(resumes):
        _, pairs, other = overrides_of(command)
        run_dir = tmp_path / f"resume{i}"
        pairs.pop("resume")
        pairs.update({**tiny, "train.steps": "400", "train.eval_every": "20"})
        proc = start_train(run_dir, *other, *(f"{k}={v}" for k, v in pairs.items()))
        wait_for_step(proc, run_dir, 20)
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=180)
        assert proc.returncode == 130
        run_ok(train_argv({**pairs, "resume": str(run_dir)}, other), tmp_path)
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    for i, command in enumerate(compares):
        words = shlex.split(command)
        words[2] = str(made[0])
        words = [str(tmp_path / f"compare{i}.png") if w.endswith(".png") else w for w in words]
        proc = run_ok([sys.executable, str(ROOT / "scripts" / "compare.py"), *words[2:]],
                      tmp_path)
        assert "standard" in proc.stdout, command


# --- links between pages, and the troubleshooting page's messages ---------------------------


def outside_code(text: str) -> str:
    """The page without its fenced blocks and inline code spans (a `](x)` there is no link)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def anchors(text: str) -> set:
    """GitHub's anchors for the headings of a page: lower case, punctuation dropped, spaces to
    hyphens (`## Weights & Biases` -> `weights--biases`)."""
    titles = re.findall(r"^#{1,6} (.+)$", outside_code(text), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}


def test_every_relative_link_in_the_docs_resolves():
    checked = 0
    for page, text in page_texts().items():
        for target in re.findall(r"\]\(([^)\s]+)\)", outside_code(text)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: link to {target}: no such file"
            if anchor:
                assert anchor in anchors(file.read_text()), (
                    f"{page.name}: link to {target}: no heading with that anchor in {file.name}")
            checked += 1
    assert checked > 20  # the front page links to every page, the pages to each other


@pytest.mark.slow
def test_troubleshooting_quotes_todays_messages_and_exit_codes(tiny_run, tmp_path):
    """Each `$ python scripts/train.py ...` of the troubleshooting page, run as written, prints
    the error line the page shows under it and exits 2 (numbers of GiB and the folder it ran in,
    /home/me/tinyinduct on the page, are the machine's)."""
    import shutil

    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    pairs = re.findall(r"^\$ (python scripts/train\.py [^\n]*?)(?:\s+#[^\n]*)?\n(error: [^\n]+)$",
                       text, flags=re.M)
    assert len(pairs) >= 7, pairs
    # the directory that "holds a finished run": a copy of a real one
    shutil.copytree(tiny_run, tmp_path / "outputs" / "my-run")
    for command, expected in pairs:
        words = shlex.split(command)
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *words[2:],
                               "logger.mode=disabled"], cwd=tmp_path, capture_output=True,
                              text=True, env=child_env(), timeout=300)
        assert proc.returncode == 2, f"{command}: exit {proc.returncode}\n{proc.stderr}"
        pattern = r"[\d.]+ GiB".join(re.escape(part) for part in re.split(r"[\d.]+ GiB", expected))
        today = proc.stderr.strip().splitlines()[-1].replace(str(tmp_path), "/home/me/tinyinduct")
        assert re.fullmatch(pattern, today), f"{command}\n  page: {expected}\n  today: {today}"


def read_terminal(argv: list, until: tuple, timeout: float = 120) -> str:
    """Run a terminal program in a pseudo-terminal until every string of `until` has appeared on
    its screen (or `timeout`), then press q; return what it drew, escape sequences removed."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**child_env(), "TERM": "xterm-256color"})
    os.close(slave)
    raw, deadline = b"", time.monotonic() + timeout
    screen = ""
    try:
        while time.monotonic() < deadline and not all(u in screen for u in until):
            if select.select([master], [], [], 0.5)[0]:
                try:
                    raw += os.read(master, 1 << 16)
                except OSError:  # the program ended
                    break
                screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode("utf8", "replace"))
        os.write(master, b"q")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    return screen


@pytest.mark.slow
def test_wandb_leet_shows_the_offline_run(tmp_path):
    """`wandb leet outputs/<date>/<time>/wandb/offline-run-*`, with a real offline run's folder
    for the placeholder, draws that run's charts and summary in the terminal, with no account."""
    from conftest import run_train

    commands = [c for c in shell_commands() if c.startswith("wandb leet ")]
    assert commands
    run_dir = tmp_path / "run"
    proc = run_train(run_dir, *TINY_OVERRIDES, "train.steps=20", "logger.mode=offline")
    assert proc.returncode == 0, proc.stderr
    wandb = Path(sys.executable).parent / "wandb"
    for command in commands:
        pattern = shlex.split(command)[2]
        placeholder = "outputs/<date>/<time>"
        assert pattern.startswith(placeholder + "/"), command
        matches = glob.glob(str(run_dir) + pattern[len(placeholder):])
        assert len(matches) == 1, (command, matches)
        screen = read_terminal([str(wandb), "leet", matches[0]],
                               until=("[x: step]", "budget_steps"))
        assert "[x: step]" in screen and "budget_steps" in screen, screen[-2000:]
