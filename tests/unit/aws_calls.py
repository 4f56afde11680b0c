"""The AWS calls a program makes, found by reading its source (no process runs).

A program is an entry module and every first-party module it imports, directly or not, at the
top or inside a function. In those modules, an attribute of something named like a boto3 client
(``self.sqs``, ``s3``, ``self._ec2``) that is one of that client's operations is a call to that
operation, whether it is called on the spot or handed on (``call=self.ec2.create_tags``);
``get_paginator("list_objects_v2")`` is a call to the operation it pages, and boto3's managed
transfers (``upload_file``, ``copy``, ...) are calls to every operation they may make.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import botocore.session

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = (REPO / "services", REPO / "operator")
FIRST_PARTY = ("framescale", "framescale_operator")

# How the code names its clients: the variable or attribute, less a leading underscore.
CLIENT_NAMES = {"sqs": "sqs", "s3": "s3", "sns": "sns", "ec2": "ec2", "autoscaling": "autoscaling"}

# boto3's managed transfers and the S3 operations each may make (boto3.s3.transfer / s3transfer).
_UPLOAD = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload")
_DOWNLOAD = ("HeadObject", "GetObject")
TRANSFERS = {
    "upload_file": _UPLOAD,
    "upload_fileobj": _UPLOAD,
    "download_file": _DOWNLOAD,
    "download_fileobj": _DOWNLOAD,
    # The size first, then one copy or a multipart copy.
    "copy": (
        "HeadObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    ),
}


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    where: str  # module:line


@functools.cache
def operations(service: str) -> dict[str, str]:
    """A client's method names and the API operations they call (``receive_message`` -> ``ReceiveMessage``)."""
    model = botocore.session.get_session().get_service_model(service)
    return {botocore.xform_name(name): name for name in model.operation_names}


def module_path(module: str) -> Path | None:
    for root in SOURCE_ROOTS:
        base = root.joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.exists():
                return candidate
    return None


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target
            # `from framescale import aws` imports the module framescale.aws.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def closure(entry: str) -> dict[str, ast.Module]:
    """The entry module and every first-party module it reaches, parsed."""
    seen: dict[str, ast.Module] = {}
    pending = [entry]
    while pending:
        module = pending.pop()
        if module in seen or not module.startswith(FIRST_PARTY):
            continue
        path = module_path(module)
        if path is None:
            continue
        tree = ast.parse(path.read_text(), str(path))
        seen[module] = tree
        # A module's packages run first.
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        pending.extend(_imported(tree, module, path.name == "__init__.py"))
    return seen


def _client_service(node: ast.expr) -> str | None:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return CLIENT_NAMES.get(name.lstrip("_")) if name else None


def calls(modules: dict[str, ast.Module]) -> set[Call]:
    found: set[Call] = set()
    for module, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                service = _client_service(node.func.value)
                if service and node.func.attr == "get_paginator" and node.args:
                    argument = node.args[0]
                    if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
                        raise AssertionError(f"{module}:{node.lineno}: get_paginator of a name the scan cannot read")
                    found.add(Call(service, operations(service)[argument.value], f"{module}:{node.lineno}"))
            if not isinstance(node, ast.Attribute):
                continue
            service = _client_service(node.value)
            if service is None:
                continue
            where = f"{module}:{node.lineno}"
            if node.attr in operations(service):
                found.add(Call(service, operations(service)[node.attr], where))
            elif service == "s3" and node.attr in TRANSFERS:
                found.update(Call(service, operation, where) for operation in TRANSFERS[node.attr])
    return found


def clients_made(modules: dict[str, ast.Module]) -> set[tuple[str, str]]:
    """(service, module:line) of every ``aws.client("x")``, ``boto3.client("x")`` or ``session.client("x")``."""
    made = set()
    for module, tree in modules.items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "client"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                made.add((node.args[0].value, f"{module}:{node.lineno}"))
    return made
