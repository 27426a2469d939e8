"""The docs are true: every checkable claim in README.md, docs/*.md, cluster/**/*.md and the comments of
cluster/**/*.yaml, checked against the repository, the code and the installed tools. New docs in those places
are picked up by the globs; a new kind of claim gets a new extractor here.

- commands: every `atomica-ray ...` and `ray ...` line of a ```bash block parses with the command's own parser
  (atomica-ray's argparse, Ray's click CLI); in inline `code` and in YAML comments, where `...` stands for more
  arguments, the sub-command and every flag exist; flags named alone in prose exist in some parser
- repository paths: every path that starts with a top-level entry of the repository (`atomica_ray/...`,
  `cluster/...`, `tune_spaces/...`; in cluster/ docs also `kuberay/...`) and every relative link exists
- file names: every `name.ext` (or `name/`) in inline code is a file of the repository, a name the code writes or
  reads (a string literal in atomica_ray/ or benchmarks/, f-strings as patterns: `epoch{E}_step{S}.pt`), or one
  that a documented command creates (`> run.yaml`, `--out DIR`)
- config keys and names: `key: value` is a valid TrainConfig entry; a snake_case or CamelCase word in inline code
  occurs in the code or the cluster files; a dotted `atomica_ray.`/`ray.` name imports; ```python blocks import
  what they name and call it with keywords it accepts
- lists and counts: a list of the tasks or of the search-space distributions names all and only those the code
  has; "replace YOUR_X (twice)" in a cluster file matches the file
- ports: every port named is one Ray uses by default for that service or one the cluster files set; dashboard
  URLs use the dashboard port; the workers of a launcher config join the head on the head's port
- the README's test command is the one CI runs, with a summary that names failures
Each extractor also gets a broken text, to show that it can fail.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from test_cluster_files import atomica_ray_args, parse_ray, shell_commands

ROOT = Path(__file__).resolve().parents[1]
MD_DOCS = ("README.md", "docs/*.md", "cluster/**/*.md")
YAML_DOCS = ("cluster/**/*.yaml",)
FILE_EXTENSIONS = ("json", "jsonl", "pt", "pth", "ckpt", "bin", "yaml", "yml", "csv", "md", "py", "sh", "toml",
                   "parquet", "pkl", "gz", "html", "png", "txt", "log")
# Flags that the docs name on purpose although no parser of ours or Ray's has them, with the reason.
FOREIGN_FLAGS = {"--gpu": "ATOMICA's own train.py flag, named to say what replaces it"}
# Names of other tools (environment variables, settings) that the docs name and our code never spells out, with the
# tool they belong to.
FOREIGN_NAMES: dict[str, str] = {}


# ---- the docs and their parts ---------------------------------------------------------------------------------------
def doc_paths(patterns) -> list[Path]:
    return sorted({p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()})


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(first line, language, code) of every ``` block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def prose(text: str) -> str:
    """The text outside ``` blocks, with the blocks blanked (line numbers kept)."""
    return re.sub(r"^```\w*\n.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.M | re.S)


def inline_spans(text: str) -> list[tuple[int, str]]:
    """(line, content) of every `code` span of the prose; a span may wrap onto the next line."""
    body = prose(text)
    return [(body[: m.start()].count("\n") + 1, " ".join(m.group(1).split()))
            for m in re.finditer(r"`([^`]+)`", body)]


def yaml_comments(text: str) -> str:
    """The comments of a YAML file, one per line (other lines blank, so line numbers stay)."""
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            out.append(line.lstrip()[1:])
            continue
        m = re.search(r"\s#\s(.*)$", line)  # a trailing comment (our YAML has no ' # ' inside values)
        out.append(m.group(1) if m else "")
    return "\n".join(out)


class Doc:
    def __init__(self, path: Path):
        self.path, self.name = path, rel(path)
        raw = path.read_text()
        self.is_yaml = path.suffix in (".yaml", ".yml")
        self.text = yaml_comments(raw) if self.is_yaml else raw

    def bash_blocks(self) -> list[tuple[int, str]]:
        if self.is_yaml:  # indented command lines of the comments, e.g. "#   ray up cluster/aws.yaml"
            return [(i + 1, line.strip()) for i, line in enumerate(self.text.replace("\\\n", " ").splitlines())
                    if re.match(r"\s{2,}(ray|atomica-ray|kubectl|export|aws|gcloud|helm) ", line)]
        return [(line, code) for line, lang, code in fenced_blocks(self.text) if lang == "bash"]

    def python_blocks(self) -> list[tuple[int, str]]:
        return [] if self.is_yaml else [(line, code) for line, lang, code in fenced_blocks(self.text)
                                        if lang == "python"]

    def spans(self) -> list[tuple[int, str]]:
        return inline_spans(self.text)


@lru_cache(maxsize=None)
def docs() -> tuple[Doc, ...]:
    return tuple(Doc(p) for p in doc_paths(MD_DOCS) + doc_paths(YAML_DOCS))


def test_the_docs_are_found():
    names = [d.name for d in docs()]
    assert {"README.md", "docs/DESIGN.md", "docs/running-on-a-cluster.md", "cluster/local-debugging.md",
            "cluster/aws.yaml", "cluster/kuberay/rayjob.yaml"} <= set(names), names
    aws = next(d for d in docs() if d.name == "cluster/aws.yaml")
    assert any(code.startswith("ray up ") for _, code in aws.bash_blocks())


def report(errors: list[str]) -> None:
    assert not errors, "\n" + "\n".join(errors)


# ---- commands -------------------------------------------------------------------------------------------------------
def bash_commands(code: str) -> list[list[str]]:
    return shell_commands(code.replace("\\\n", " "))


@lru_cache(maxsize=None)
def atomica_ray_options() -> dict[str, set[str]]:
    """Sub-command -> its option strings, from each command's own parser."""
    import argparse

    from atomica_ray.cli.main import COMMANDS

    out = {}
    for name, (module_name, _) in COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"atomica-ray {name}")
        importlib.import_module(module_name).add_arguments(parser)
        out[name] = {o for action in parser._actions for o in action.option_strings}
    return out


def ray_command(words: list[str]):
    """The click command that `ray WORDS...` names, and the words after its name."""
    import click
    from ray.scripts.scripts import cli

    command, i = cli, 0
    while isinstance(command, click.Group) and i < len(words) and words[i] in command.commands:
        command, i = command.commands[words[i]], i + 1
    return command, words[i:]


@lru_cache(maxsize=None)
def ray_options() -> set[str]:
    import click
    from ray.scripts.scripts import cli

    found, todo = set(), [cli]
    while todo:
        command = todo.pop()
        found |= {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        if isinstance(command, click.Group):
            todo += list(command.commands.values())
    return found


def flag(word: str) -> str | None:
    return word.split("=", 1)[0] if re.match(r"--[a-z]", word) else None


def command_name_errors(argv: list[str]) -> list[str]:
    """For command lines with placeholders (`...`): the sub-command and every flag exist."""
    argv = [w for w in argv if w not in ("...", "\\")]
    if "--" in argv:  # `ray job submit ... -- ENTRYPOINT`
        cut = argv.index("--")
        return command_name_errors(argv[:cut]) + command_name_errors(argv[cut + 1:])
    if not argv:
        return []
    if argv[0] == "atomica-ray":
        if len(argv) == 1:
            return []
        options = atomica_ray_options().get(argv[1])
        if options is None:
            return [f"atomica-ray has no sub-command {argv[1]!r}"]
        return [f"atomica-ray {argv[1]} has no flag {f}" for f in map(flag, argv[2:]) if f and f not in options]
    if argv[0] == "ray":
        import click

        command, rest = ray_command(argv[1:])
        if isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
            return [f"ray has no command {' '.join(argv[1:2 + len(rest[:1])])!r}"]
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        return [f"{shlex.join(argv[:3])}: no flag {f}" for f in map(flag, rest) if f and f not in options]
    return []


def documented_commands() -> list[tuple[str, list[str], bool]]:
    """(where, argv, complete) of every ray / atomica-ray command; complete: a ```bash line of a markdown doc."""
    found = []
    for doc in docs():
        for line, code in doc.bash_blocks():
            for argv in bash_commands(code):
                if argv and argv[0] in ("ray", "atomica-ray"):
                    complete = not doc.is_yaml and "..." not in argv
                    found.append((f"{doc.name}:{line}: {shlex.join(argv[:3])}", argv, complete))
        for line, span in doc.spans():
            if re.match(r"(ray|atomica-ray) [a-z]", span):
                for argv in bash_commands(span):
                    found.append((f"{doc.name}:{line}: `{span[:40]}`", argv, False))
    return found


COMMANDS = documented_commands()


@pytest.mark.parametrize("argv,complete", [(a, c) for _, a, c in COMMANDS], ids=[w for w, _, _ in COMMANDS])
def test_documented_command_is_real(argv, complete):
    import click

    report(command_name_errors(argv))
    if not complete:
        return
    if argv[0] == "ray":
        try:
            name, params = parse_ray(argv)
        except click.ClickException as error:
            pytest.fail(f"{shlex.join(argv)}: {error.format_message()}")
        if name != "submit" or not params.get("entrypoint") or params["entrypoint"][0] != "atomica-ray":
            return
        argv = list(params["entrypoint"])
    args = atomica_ray_args(argv)
    if argv[1] == "tune" and args.space:  # the documented search space must exist
        assert (ROOT / args.space).is_file(), f"{args.space} does not exist"


def flags_in_prose() -> list[tuple[str, str]]:
    return [(f"{doc.name}:{line}", f) for doc in docs() for line, span in doc.spans() if span.startswith("--")
            for f in map(flag, span.split()) if f]


def test_flags_named_in_prose_exist():
    known = set().union(*atomica_ray_options().values(), ray_options(), FOREIGN_FLAGS)
    found = flags_in_prose()
    assert len(found) >= 10
    report([f"{where}: {f} is no flag of atomica-ray or ray" for where, f in found if f not in known])


def test_command_checks_fail_on_wrong_names():
    assert command_name_errors(["atomica-ray", "trian"]) == ["atomica-ray has no sub-command 'trian'"]
    assert command_name_errors(["atomica-ray", "train", "...", "--use-gpus"]) == [
        "atomica-ray train has no flag --use-gpus"]
    assert command_name_errors(["ray", "job", "sumbit", "--", "atomica-ray", "tune", "--spaces", "x"]) == [
        "ray has no command 'job sumbit'", "atomica-ray tune has no flag --spaces"]
    assert command_name_errors(["ray", "start", "--head", "--dashboard-agent-port=0"]) == [
        "ray start --head: no flag --dashboard-agent-port"]
    assert command_name_errors(["ray", "up", "-y", "cluster/aws.yaml"]) == []


# ---- repository paths -----------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def tracked_files() -> tuple[str, ...]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return tuple(out.split())
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what is on disk, minus build output
        skip = {".git", "__pycache__", ".pytest_cache", "build", "runs", "wandb"}
        return tuple(rel(p) for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
                     and not any(part.endswith(".egg-info") for part in p.parts))


def path_pattern(entries: set[str]) -> re.Pattern:
    names = "|".join(sorted((re.escape(e) for e in entries), key=len, reverse=True))
    return re.compile(rf"(?<![\w./~:@$-])(?:{names})/[\w.*{{}}/-]*")


def folder_entries(folder: Path) -> set[str]:
    """The sub-folders of a repository folder that hold tracked files."""
    prefix = "" if folder == ROOT else rel(folder) + "/"
    return {f[len(prefix):].split("/")[0] for f in tracked_files() if f.startswith(prefix) and "/" in f[len(prefix):]}


def repo_path_errors(doc_name: str, text: str) -> list[str]:
    """Paths that start with a top-level folder of the repository (or a sub-folder of the doc's folder) and do not
    exist; relative links that lead nowhere."""
    base = (ROOT / doc_name).parent
    errors = []
    for folder in dict.fromkeys([ROOT, base]):
        entries = folder_entries(folder)
        if not entries:
            continue
        for m in path_pattern(entries).finditer(text):
            path = m.group(0).rstrip(".,;:")
            line = text[: m.start()].count("\n") + 1
            if "*" in path or "{" in path:
                if not list(folder.glob(re.sub(r"\{[^}]*\}", "*", path))):
                    errors.append(f"{doc_name}:{line}: nothing matches {path}")
            elif not (folder / path).exists():
                errors.append(f"{doc_name}:{line}: {path} does not exist")
    for m in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):  # markdown links
        target = m.group(1)
        if "://" not in target and not target.startswith("mailto:") and not (base / target).exists():
            errors.append(f"{doc_name}:{text[: m.start()].count(chr(10)) + 1}: link to {target}, which does not exist")
    return errors


def test_repository_paths_named_in_the_docs_exist():
    report([e for doc in docs() for e in repo_path_errors(doc.name, doc.text)])


def test_path_check_finds_missing_paths():
    text = ("See `docs/running-on-a-cluster.md` and cluster/kuberay/raycluster.yaml, [design](docs/NOPE.md); "
            "not /home/ray/atomica-ray/data/ or s3://b/cluster/x.yaml; tune_spaces/nope.yaml, atomica_ray/*.py.")
    assert repo_path_errors("README.md", text) == ["README.md:1: docs/NOPE.md does not exist",
                                                   "README.md:1: tune_spaces/nope.yaml does not exist",
                                                   "README.md:1: link to docs/NOPE.md, which does not exist"]
    assert repo_path_errors("cluster/local-debugging.md", "`kuberay/rayjob.yaml`, kuberay/nope.yaml") == [
        "cluster/local-debugging.md:1: kuberay/nope.yaml does not exist"]


# ---- file names -----------------------------------------------------------------------------------------------------
def code_strings() -> tuple[set[str], list[re.Pattern]]:
    """String literals of atomica_ray/ and benchmarks/, and f-strings as patterns (each {field} matches a run of
    characters)."""
    literals, patterns = set(), []
    for path in sorted([*ROOT.glob("atomica_ray/**/*.py"), *ROOT.glob("benchmarks/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                fixed = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if len(re.sub(r"\W", "", fixed)) >= 3:  # f"{a}_{b}" would match any name
                    parts = [re.escape(v.value) if isinstance(v, ast.Constant) else r"[^/]+?" for v in node.values]
                    patterns.append(re.compile("".join(parts)))
    return literals, patterns


@lru_cache(maxsize=None)
def known_names() -> tuple[set[str], list[re.Pattern]]:
    """Names a doc may give: repository files and folders, names in the code, names documented commands create."""
    names = {part for f in tracked_files() for part in Path(f).parts}
    literals, patterns = code_strings()
    names |= {Path(s).name for s in literals if s and "\n" not in s and len(s) < 200}
    for doc in docs():
        for _, code in doc.bash_blocks():
            for argv in bash_commands(code):
                for option, value in zip(argv, argv[1:]):
                    if option in ("--out", "--output_path", "--output-path", "-o"):
                        names |= set(Path(value).parts)
            names |= {Path(t).name for t in re.findall(r">\s*([\w./~-]+)", code)}  # redirection targets
            names |= {p for t in re.findall(r"mkdir -p (\S+)", code) for p in Path(t).parts}
    return names, patterns


def file_name_errors(doc_name: str, spans: list[tuple[int, str]]) -> list[str]:
    names, patterns = known_names()
    errors = []
    for line, span in spans:
        for word in re.split(r"[\s,()]+", span):
            m = re.fullmatch(rf"(?:[\w.-]+/)*([\w][\w.{{}}-]*\.(?:{'|'.join(FILE_EXTENSIONS)})|[\w-]+/)", word)
            if not m or word.startswith(("~", "/")) or "://" in word:
                continue
            name = m.group(1).rstrip("/")
            concrete = re.sub(r"\{\w+\}", "0", name)  # `epoch{E}_step{S}.pt` -> epoch0_step0.pt
            if name in names or any(p.fullmatch(concrete) for p in patterns):
                continue
            errors.append(f"{doc_name}:{line}: `{word}`: no file of the repository, no name the code writes or reads, "
                          "and no documented command creates it")
    return errors


def test_file_names_in_the_docs_are_real():
    report([e for doc in docs() for e in file_name_errors(doc.name, doc.spans())])


def test_file_name_check_finds_names_nothing_writes():
    spans = [(1, "metrics_history.jsonl"), (2, "metrics.jsonl"), (3, "epoch{E}_step{S}.pt"), (4, "best_model/"),
             (5, "checkpoint_epoch0001_step00000012"), (6, "RESULTS.md"), (7, "model.pth"), (8, "~/.bashrc")]
    errors = file_name_errors("README.md", spans)
    assert [e.split(":")[1] for e in errors] == ["2", "7"], errors


# ---- config keys and names ------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def code_words() -> set[str]:
    files = [*ROOT.glob("atomica_ray/**/*.py"), *ROOT.glob("configs/*.yaml"), *ROOT.glob("tune_spaces/*.yaml"),
             *ROOT.glob("cluster/**/*.yaml"), *ROOT.glob("benchmarks/*.py")]
    return {w for f in files for w in re.findall(r"[A-Za-z_]\w*", f.read_text())}


@lru_cache(maxsize=None)
def config_keys() -> set[str]:
    from atomica_ray.train.config import TrainConfig

    return set(TrainConfig.field_types())


@lru_cache(maxsize=None)
def ray_env_names() -> set[str]:
    """RAY_* names in the installed Ray's core Python source (where it reads its environment variables)."""
    import ray

    base = Path(ray.__file__).parent
    return {w for f in [*base.glob("*.py"), *base.glob("_private/**/*.py")]
            for w in re.findall(r"\bRAY_[A-Z0-9_]+", f.read_text(errors="replace"))}


@lru_cache(maxsize=None)
def placeholders() -> set[str]:
    """Upper-case words that documented commands use for what the user fills in (JOB_ID, YOUR_BUCKET, RUN_DIR)."""
    return {w for doc in docs() for _, code in doc.bash_blocks()
            for w in re.findall(r"\b[A-Z][A-Z0-9_]*[A-Z0-9]\b", code)}


def config_entry_error(key: str, value: str) -> str | None:
    from atomica_ray.train.config import TrainConfig

    try:
        TrainConfig.from_dict({key: yaml.safe_load(value)}, source="doc")
    except (ValueError, TypeError) as error:
        return str(error)[:300]
    return None


def name_errors(doc_name: str, spans: list[tuple[int, str]]) -> list[str]:
    errors = []
    for line, span in spans:
        where = f"{doc_name}:{line}: `{span}`"
        entry = re.fullmatch(r"([a-z][a-z0-9_]*): (\S+)", span)
        if entry:  # a config entry as a user writes it in a config file (or a key of a cluster file)
            key, value = entry.groups()
            if key in config_keys():
                error = config_entry_error(key, value)
            else:
                error = None if key in code_words() else f"{key} is no config key and occurs nowhere in the code"
            if error:
                errors.append(f"{where}: {error}")
            continue
        dotted = re.fullmatch(r"((?:atomica_ray|ray)(?:\.\w+)+)(?:\(.*\))?", span)
        if dotted and span.rsplit(".", 1)[1] in FILE_EXTENSIONS:  # a file name (`atomica_ray.json`): checked above
            continue
        if dotted:
            try:
                resolve(dotted.group(1))
            except (ImportError, AttributeError) as error:
                errors.append(f"{where}: {error}")
            continue
        name = re.fullmatch(r"(?:\w+\.)?([A-Za-z_]\w*)(?:\(.*\))?(?: -> \w+)?", span)
        if name and ("_" in name.group(1).strip("_") or re.search(r"[a-z][A-Z]", name.group(1))):
            word = name.group(1)
            if not (word in code_words() or word in ray_env_names() or word in placeholders() or word in FOREIGN_NAMES):
                errors.append(f"{where}: {word} occurs nowhere in the code, configs, cluster files or Ray's "
                              "environment variables, and no documented command uses it as a placeholder (another "
                              "tool's name? add it to FOREIGN_NAMES in tests/test_docs.py, with the tool)")
    return errors


def resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module {parts[0]}")


def test_names_and_config_entries_in_the_docs_exist():
    report([e for doc in docs() for e in name_errors(doc.name, doc.spans())])


def test_name_check_finds_stale_names():
    spans = [(1, "precision: bf16"), (2, "precision: bf17"), (3, "lr_warmup_steps"), (4, "warmup_lr_steps"),
             (5, "atomica_ray.models.load_atomica(config, weights)"), (6, "atomica_ray.models.load_atomika"),
             (7, "TorchTrainer"), (8, "TorchTrainers"), (9, "cudagraphs: true"), (10, "atomica_ray.json")]
    errors = name_errors("README.md", spans)
    assert [e.split(":")[1] for e in errors] == ["2", "4", "6", "8", "9"], errors


def python_block_errors(where: str, code: str) -> list[str]:
    """Imports resolve, and calls of imported callables pass only keywords they accept."""
    tree = ast.parse(re.sub(r",\s*\.\.\.\s*\)", ")", code))  # `f(a=1, ...)`: more arguments
    bound, errors = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                try:
                    bound[alias.asname or alias.name] = getattr(importlib.import_module(node.module), alias.name)
                except (ImportError, AttributeError) as error:
                    errors.append(f"{where}: from {node.module} import {alias.name}: {error}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        target = None
        if isinstance(func, ast.Name):
            target = bound.get(func.id)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in bound:
            target = getattr(bound[func.value.id], func.attr, None)
            if target is None:
                errors.append(f"{where}: {func.value.id}.{func.attr} does not exist")
        if target is None or not callable(target):
            continue
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in params:
                errors.append(f"{where}: {ast.unparse(func)}() takes no keyword {kw.arg!r}")
    return errors


def test_python_blocks_import_and_call_what_exists():
    blocks = [(f"{doc.name}:{line}", code) for doc in docs() for line, code in doc.python_blocks()]
    assert blocks
    report([e for where, code in blocks for e in python_block_errors(where, code)])


def test_python_block_check_finds_wrong_keywords():
    code = ("from atomica_ray.data import make_loader, DataSpec\nfrom atomica_ray.models import load_atomics\n"
            "make_loader(spec, seed=0, epochs=3, ...)\nDataSpec.nope()\n")
    assert python_block_errors("x", code) == [
        "x: from atomica_ray.models import load_atomics: module 'atomica_ray.models' has no attribute 'load_atomics'",
        "x: make_loader() takes no keyword 'epochs'", "x: DataSpec.nope does not exist"]


# ---- lists that name every member of a set in the code ------------------------------------------------------------
def enumerations():
    """(what, pattern of the list's lead-in, the set the code has): a list in the docs must name all and only those."""
    from atomica_ray.tasks import TASKS
    from atomica_ray.tune.space import DISTRIBUTIONS

    return [("tasks", r"Tasks: ", set(TASKS)),
            ("search-space distributions", r"Spaces are YAML \(", set(DISTRIBUTIONS))]


def listed(text: str, lead: str) -> list[set[str]]:
    """The `code` names of each list that follows `lead` in the text (names separated by commas, 'and', 'or')."""
    body = " ".join(prose(text).split())
    return [set(re.findall(r"`([^`]+)`", m.group(1)))
            for m in re.finditer(lead + r"((?:`[^`]+`(?:,\s*|\s+and\s+|\s+or\s+)?)+)", body)]


def test_lists_name_every_task_and_distribution():
    for what, lead, members in enumerations():
        lists = [(doc.name, names) for doc in docs() if not doc.is_yaml for names in listed(doc.text, lead)]
        assert lists, f"no list of the {what} found"
        report([f"{name}: the list of {what} lacks {sorted(members - names)} and names {sorted(names - members)}"
                for name, names in lists if names != members])
    assert listed("Tasks: `a`, `b` and\n`c`. Also `d`.", "Tasks: ") == [{"a", "b", "c"}]


# ---- counted claims -------------------------------------------------------------------------------------------------
COUNTS = {"once": 1, "twice": 2, "three times": 3, "four times": 4, "five times": 5}


def placeholder_count_errors(doc_name: str, comments: str, content: str) -> list[str]:
    """`replace YOUR_X (once|twice|four times ...)` in a YAML file's comments: the file's values hold it so often."""
    errors = []
    for m in re.finditer(rf"replace (YOUR_\w+) \(({'|'.join(COUNTS)})", comments):
        found = len(re.findall(rf"\b{m.group(1)}\b", content))
        if found != COUNTS[m.group(2)]:
            errors.append(f"{doc_name}: says replace {m.group(1)} {m.group(2)}, but its values hold it {found} times")
    return errors


def test_counted_placeholders_match_the_files():
    claims, errors = 0, []
    for doc in (d for d in docs() if d.is_yaml):
        values = "\n".join(line.split(" #", 1)[0] for line in doc.path.read_text().splitlines()
                           if not line.lstrip().startswith("#"))
        claims += len(re.findall(r"replace YOUR_\w+ \(", doc.text))
        errors += placeholder_count_errors(doc.name, doc.text, values)
    assert claims >= 2
    report(errors)
    assert placeholder_count_errors("x.yaml", "replace YOUR_A (twice) here", "a: YOUR_A\nb: YOUR_A-x\nc: YOUR_AB") == []
    assert placeholder_count_errors("x.yaml", "replace YOUR_A (once) here", "a: YOUR_A\nb: YOUR_A") == [
        "x.yaml: says replace YOUR_A once, but its values hold it 2 times"]


# ---- ports ----------------------------------------------------------------------------------------------------------
PORT_MENTIONS = [
    (r"(?<![=\w.$])(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\$RAY_HEAD_IP|\$HEAD_IP):(\d+)", "address"),
    (r"--([\w-]*port)[= ](\d+)", "flag"),
    (r"port-forward \S+ (\d+):(\d+)", "forward"),
    (r"\bports? (\d{2,5})\b", "prose"),
    (r"containerPort: (\d+)", "container"),
    (r"--[\w-]*address[= ](?!https?://)[\w.$]*:(\d+)", "listen"),  # a server told where to listen
]


def port_mentions(text: str) -> list[tuple[int, str, str, int]]:
    """(line, kind, flag name, port) of every port named in a text."""
    found = []
    for pattern, kind in PORT_MENTIONS:
        for m in re.finditer(pattern, text):
            line = text[: m.start()].count("\n") + 1
            if kind == "flag":
                found.append((line, kind, m.group(1), int(m.group(2))))
            elif kind == "forward":
                found += [(line, "local", "", int(m.group(1))), (line, "dashboard", "", int(m.group(2)))]
            else:
                found.append((line, kind, "", int(m.group(1))))
    return found


def ray_default_ports() -> dict[int, str]:
    from ray._private import ray_constants

    return {ray_constants.DEFAULT_PORT: "GCS (ray start --head)", ray_constants.DEFAULT_DASHBOARD_PORT: "dashboard",
            ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT: "dashboard agent", 10001: "Ray client server",
            0: "a free port"}


def set_ports(texts) -> set[int]:
    """Ports that texts set: flags (`--port=6379`, `--dashboard-port 8266`) and containerPort."""
    return {port for text in texts for _, kind, _, port in port_mentions(text)
            if kind in ("flag", "container", "listen")}


@lru_cache(maxsize=None)
def code_ports() -> set[int]:
    """Integer literals of atomica_ray/ that can be ports (a server the code starts or talks to)."""
    return {node.value for path in ROOT.glob("atomica_ray/**/*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and type(node.value) is int and 1024 <= node.value <= 65535}


def dashboard_ports(texts) -> set[int]:
    from ray._private import ray_constants

    return {ray_constants.DEFAULT_DASHBOARD_PORT} | {
        p for text in texts for _, _, name, p in port_mentions(text) if name == "dashboard-port"}


def port_errors(doc_name: str, text: str) -> list[str]:
    """A port named must be one that Ray uses by default, that the cluster files, the doc itself or the code set;
    the dashboard's URLs (a `ray` command's --address, a link next to the word dashboard) and KubeRay's
    port-forward use a dashboard port."""
    cluster = [path.read_text() for path in doc_paths(YAML_DOCS)]
    allowed = set(ray_default_ports()) | set_ports([*cluster, text]) | code_ports()
    dashboard = dashboard_ports([*cluster, text])
    errors = []
    for line, kind, _, port in port_mentions(text):
        if port not in allowed:
            errors.append(f"{doc_name}:{line}: port {port}: not Ray's default for a service, and neither the cluster "
                          "files, this doc's commands nor the code set it")
        elif kind == "dashboard" and port not in dashboard:
            errors.append(f"{doc_name}:{line}: port {port}: forwards to a port that is not the dashboard's "
                          f"({sorted(dashboard)})")
    urls = [m for m in re.finditer(r"(?:--address[= ]|<)(https?://[\w.]+:(\d+))", text)
            if m.group(0).startswith("--") or "dashboard" in text[max(0, m.start() - 120): m.end() + 120].lower()]
    for m in urls:
        if int(m.group(2)) not in dashboard:
            errors.append(f"{doc_name}:{text[: m.start()].count(chr(10)) + 1}: {m.group(1)}: the dashboard and job "
                          f"API are on port {sorted(dashboard)}")
    return errors


def test_ports_named_are_the_ones_used():
    found = [(doc.name, m) for doc in docs() for m in port_mentions(doc.text)]
    assert len(found) >= 10, found
    report([e for doc in docs() for e in port_errors(doc.name, doc.text)])


def test_port_check_finds_wrong_ports():
    text = ("open the dashboard at <http://127.0.0.1:8266>\nkubectl port-forward svc/h 8265:6379\nport 8265 is it\n"
            "ray job submit --address http://127.0.0.1:8264 -- x\nminio on port 9000\n")
    errors = port_errors("x.md", text)
    assert sorted(e.split(":")[1] for e in errors) == ["1", "1", "2", "4", "4", "5"], errors
    assert port_errors("x.md", "minio server --address 127.0.0.1:9000; S3 at <http://127.0.0.1:9000>") == []


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_workers_join_the_heads_port(name):
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    head_port = int(re.search(r"ray start --head .*?--port[= ](\d+)", head).group(1))
    assert re.findall(r"--address[= ]\$RAY_HEAD_IP:(\d+)", workers) == [str(head_port)]
    assert re.findall(r"--object-manager-port[= ](\d+)", head) == re.findall(r"--object-manager-port[= ](\d+)", workers)


# ---- the test command -----------------------------------------------------------------------------------------------
def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    first_block = next(code for _, lang, code in fenced_blocks(readme) if lang == "bash")
    readme_pytest = next(argv for argv in bash_commands(first_block) if argv[1:3] == ["-m", "pytest"])
    ci = (ROOT / ".ci" / "run").read_text()
    ci_pytest = next(argv for argv in bash_commands(ci) if argv[1:3] == ["-m", "pytest"])
    assert readme_pytest[1:] == ci_pytest[1:], (readme_pytest, ci_pytest)
    reports = next(a for a in ci_pytest if a.startswith("-r"))
    assert {"f", "E"} <= set(reports[2:]), "the summary names failed tests and errors"
