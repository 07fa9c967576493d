"""The MoE_PromptCL / HiDe-Prompt training checkpoints, both ways.

Those files are ``torch.save({'model': model.state_dict(), 'optimizer': ..., 'epoch': ...,
'args': ...})`` of the stage-2 prompted model (backbone, ``e_prompt.prompt``, NoRGa's
``e_prompt.act_scale``, optional ``e_prompt.prompt_key``, ``head.*``, MoCo's ``fc_norm.*``) or of
the stage-1 task-identity model (backbone, ``mlp.net.*``, ``mlp.norm.*``, ``head.*``).
`load` turns one into grouped cljax params for a `PromptedViTSpec`; `export` writes cljax params
back as ``{'model': state_dict}`` with exactly the references' keys, shapes and dtypes, so either
side's code can evaluate the other side's checkpoints.
"""

from __future__ import annotations

from typing import Any, Dict

from cljax.checkpoints import files, torch_names
from cljax.models.assembly import PromptedViTSpec


def load(path: str, spec: PromptedViTSpec) -> Dict[str, Any]:
  """Grouped cljax params (numpy float32) from a reference training checkpoint; strict."""
  return torch_names.from_state_dict(files.unwrap(files.read(path)), spec.template(), what=path)


def export(path: str, params: Dict[str, Any]) -> Dict[str, Any]:
  """Write grouped cljax params as a reference training checkpoint; returns the state dict."""
  state_dict = torch_names.to_state_dict(params)
  files.write(path, state_dict, wrap_key='model')
  return state_dict
