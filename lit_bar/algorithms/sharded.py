"""Reading and writing FSDP2-sharded tensors the way SAM and BAR need them, in plain torch.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter, and after the backward's
reduce-scatter its gradient, is a ``DTensor`` sharded along dim 0 over the data-parallel processes:
each process holds a slice (:func:`local`) and nothing else. SAM's ε and BAR's update are
elementwise, so each process applies them to its own slice in place; the only global quantities
are norms, and a norm over many sharded tensors is the square root of one sum over processes of
every slice's squared norm (:func:`global_norm_squares`): one all-reduce of a vector, however many
tensors there are. No collective per tensor and no host sync.

Only one-dimensional meshes with ``Shard`` placements are supported (FSDP2 over data parallelism,
tensor parallel size 1); :func:`shard_group` refuses the rest by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed

__all__ = [
    "any_over_shards",
    "fully_shard_blocks",
    "gathered",
    "global_norm_squares",
    "is_sharded",
    "local",
    "shard_group",
]


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


_DTENSOR = _dtensor_type()


def is_sharded(tensor: torch.Tensor | None) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (an FSDP2 parameter or gradient)."""
    return _DTENSOR is not None and isinstance(tensor, _DTENSOR)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a ``DTensor`` (a view: writing it in place writes the parameter), else
    ``tensor`` itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def shard_group(
    tensors: Sequence[torch.Tensor | None], whole_ok: bool = False
) -> torch.distributed.ProcessGroup | None:
    """The process group the sharded ones of ``tensors`` are split over, or ``None`` if none is sharded.

    ``whole_ok``: whole tensors may sit beside sharded ones (for a per-tensor question, such as
    finiteness, that each process answers alike for a whole tensor; not for sums).

    Raises:
        ValueError: Whole tensors mixed with sharded ones, or a tensor placed on a mesh of more than
            one dimension (tensor parallel, HSDP) or replicated instead of sharded: sums of slices
            would count some elements twice.
    """
    group, plain = None, 0
    for tensor in tensors:
        if not is_sharded(tensor):
            plain += tensor is not None
            continue
        mesh, placements = tensor.device_mesh, tensor.placements
        if mesh.ndim != 1 or not all(p.is_shard() for p in placements):
            raise ValueError(
                f"a DTensor on a {mesh.ndim}-D mesh with placements {tuple(placements)}: lit_bar supports "
                "FSDP2 sharding over data parallelism only (one mesh dimension, Shard placements; "
                "tensor_parallel_size 1)"
            )
        if group is None:
            group = mesh.get_group()
    if group is not None and plain and not whole_ok:
        raise ValueError(
            f"{plain} of the tensors are whole (not DTensors) beside sharded ones: under FSDP2 every "
            "trainable parameter must be sharded (fully_shard the module that holds it, or its root)"
        )
    return group


def global_norm_squares(squares: torch.Tensor, group: torch.distributed.ProcessGroup | None) -> torch.Tensor:
    """Sum the per-process partial squared norms ``squares`` (any shape) over ``group``, in one
    all-reduce; the identity for ``group=None``. Returns a new tensor."""
    total = squares.clone()
    if group is not None:
        torch.distributed.all_reduce(total, group=group)
    return total


def any_over_shards(flags: torch.Tensor, group: torch.distributed.ProcessGroup | None) -> torch.Tensor:
    """Elementwise OR of the bool ``flags`` over the processes of ``group`` (one all-reduce); the
    identity for ``group=None``. Each process judges its own slices; the verdict must be everyone's."""
    if group is None:
        return flags
    total = flags.to(torch.int32)
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.MAX, group=group)
    return total.bool()


def fully_shard_blocks(
    module: torch.nn.Module,
    mesh: torch.distributed.device_mesh.DeviceMesh,
    blocks: Sequence[str] | None = None,
    **fsdp_kwargs: object,
) -> list[torch.nn.Module]:
    """FSDP2-shard ``module``'s repeated blocks, then each child that holds parameters as a root.

    The blocks are the submodules whose class name is in ``blocks``, by default in any submodule's
    ``_no_split_modules`` (transformers' list of the layers that must not be split: a model's
    transformer layers, embeddings). Sharding them one by one lets FSDP2 all-gather one block at a
    time; the roots then shard what is left (heads, LoRA's ``modules_to_save``, and a block whose
    weight is tied to one outside it, e.g. embeddings tied to the LM head). ``module`` itself is
    not wrapped (a LightningModule keeps its class). Modules sharded already are skipped, so a second
    call (``configure_model`` runs again for ``test`` after ``fit``) changes nothing.

    Returns:
        The modules sharded by this call.

    Raises:
        ValueError: ``module`` holds parameters directly (not in a child), which no root would shard.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    direct = [name for name, _ in module.named_parameters(recurse=False)]
    if direct:
        raise ValueError(
            f"{type(module).__name__} holds parameters directly ({', '.join(direct[:3])}): FSDP2 shards "
            "its child modules, so put them in a child module (e.g. an nn.ParameterDict attribute)"
        )
    names = set(blocks or ())
    if blocks is None:
        for sub in module.modules():
            names.update(getattr(sub, "_no_split_modules", None) or ())
    names_of: dict[int, list[str]] = {}  # a tied weight (embeddings = LM head) has two names
    for name, param in module.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    done = []
    for prefix, sub in list(module.named_modules()):
        if type(sub).__name__ not in names or isinstance(sub, FSDPModule):
            continue
        inside = f"{prefix}."
        if any(not n.startswith(inside) for p in sub.parameters() for n in names_of.get(id(p), ())):
            continue  # tied to a weight outside the block: it stays with the root's group
        fully_shard(sub, mesh=mesh, **fsdp_kwargs)
        done.append(sub)
    for child in module.children():
        if not isinstance(child, FSDPModule) and any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh, **fsdp_kwargs)
            done.append(child)
    return done


@contextlib.contextmanager
def gathered(module: torch.nn.Module) -> Iterator[None]:
    """Hold an FSDP2 module's own parameters whole for the duration (``unshard``, then ``reshard``);
    nothing for a module that is not sharded.

    For calls that bypass the module's ``forward`` hooks, such as ``generate`` on a wrapped model:
    its repeated blocks gather themselves when called, but the root's own parameters (embeddings,
    final norm, head) are gathered only by the root's ``forward``.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
