"""Read template.yaml's HTTP routes, so the local gateway serves exactly what SAM deploys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stack.config import REPO

TEMPLATE = REPO / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (!Ref, !Sub...) into their long form."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)  # type: ignore[no-untyped-call]


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    loaded = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(loaded, dict)
    return loaded


@dataclass(frozen=True)
class Route:
    """One HttpApi event of one function."""

    function: str
    method: str
    path: str
    code_dir: Path
    handler: str
    timeout_s: int
    memory_mb: int

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


def routes(path: Path = TEMPLATE) -> list[Route]:
    template = load_template(path)
    glob = template.get("Globals", {}).get("Function", {})
    found = []
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        for event in props.get("Events", {}).values():
            if event.get("Type") != "HttpApi":
                continue
            found.append(
                Route(
                    function=name,
                    method=str(event["Properties"]["Method"]).upper(),
                    path=str(event["Properties"]["Path"]),
                    code_dir=(path.parent / props["CodeUri"]).resolve(),
                    handler=props.get("Handler", glob.get("Handler", "app.handler")),
                    timeout_s=int(props.get("Timeout", glob.get("Timeout", 30))),
                    memory_mb=int(props.get("MemorySize", glob.get("MemorySize", 512))),
                )
            )
    return found
