"""Row-wise (sparse) updates of embedding tables: a step costs the rows a batch reads, not the table.

A dense optimizer step over a table writes every row, both Adam moments and a zero-filled
gradient of the table's size, whether the batch read 40k rows or not. Here, as in TensorFlow's
LazyAdam and TorchRec's fused row-wise optimizers:
  1. each field's ids of the batch are made unique (`_dedupe_fields`: a field with at most B
     rows takes all its rows and marks those read, the larger ones are sorted per column), so
     a table's unique rows have the static size sum over its fields of min(B, rows);
  2. the unique rows are gathered into a small table and the model runs on it (ids resolved to
     positions in it), so the gradient is taken with respect to the gathered rows only and
     duplicate ids are combined by autodiff's segment sum;
  3. only those rows of the table and of its optimizer moments are written back (scatter into
     donated buffers); untouched rows and moments stay exactly as they are.
Tables are the packed "embed/table_<w>" (afm_jax/packing.py) and the first-order weights
"linear/weights"; every other param (MLP, cross layers, projections, numeric vectors) keeps optax.

Rules: "adam" (lazy Adam: moments and bias correction as optax.adam, on touched rows only) and
"adagrad" (row-wise Adagrad: one accumulator per row, the mean of its squared gradient).

Lazy Adam with catch-up. Dense Adam keeps moving a row after its last gradient: its momentum
decays over the following steps (by b1 a step, its v by b2) and every step applies it. A row
read once moves ~1 / (1 - b1) = 10x further under dense Adam than under plain lazy Adam, which
skips those steps; on the Criteo sample that cost 0.0016 test AUC (experiments/results/
table_optimizer.md). So each row keeps the step it was last updated at ("last"), and when it
is read again the steps it missed are applied first in closed form: zero gradient, so
    m_j = b1^i m,  v_j = b2^i v,  update_j = -lr * m_j/(1 - b1^j) / (sqrt(v_j/(1 - b2^j)) + eps)
for the i-th missed step j. The first CATCHUP_STEPS terms are summed exactly (eps taken out of
the sum, as sqrt(v) >> eps); the geometric tail past them takes one bias correction (`catchup`).
`settle` applies the pending tails of every row, for validation and the returned params.
Untouched rows and their moments stay exactly as they are until they are read or settled.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from afm_jax.errors import AfmError
from afm_jax.forms import PackedLayout, is_packed, is_table_leaf
from afm_jax.nn import first_order_rows, first_order_size, in_vocab
from afm_jax.ops import batch_loss
from afm_jax.packing import _ids, rows_l2, take_static
from afm_jax.pooling import model_inputs, real_columns, split_inputs

TABLE_OPTIMIZERS = ("auto", "rowwise", "rowwise_adagrad", "dense")
# "auto": row-wise when the tables hold at least AUTO_ROWS_PER_SLOT rows per dedupe slot of a
# batch (`batch_slots`), dense below; see `resolve` for the cost model behind it.
AUTO_ROWS_PER_SLOT = 4.0
_RULES = {"rowwise": "adam", "rowwise_adagrad": "adagrad"}


class RowwiseState(NamedTuple):
    """Optimizer state: optax's for the dense params (tables as None), per-table row slots
    ({"m", "v"} [N, w] for Adam, {"acc"} [N] for Adagrad) and the step count."""

    dense: Any
    slots: dict
    count: jax.Array


def table_paths(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(parent, key) of every row-wise table leaf: packed "embed/table_<w>", "linear/weights"."""
    out = []
    for parent in ("embed", "linear"):
        node = params.get(parent)
        if not isinstance(node, Mapping) or (parent == "embed" and not is_packed(node)):
            continue
        out += [(parent, k) for k, v in node.items()
                if not isinstance(v, (Mapping, PackedLayout)) and is_table_leaf([parent, k], v)]
    return tuple(out)


def _split(params: Mapping[str, Any], paths) -> tuple[dict, dict]:
    """(params with each table replaced by None, {"parent/key": table})."""
    dense = dict(params)
    tables = {}
    for parent, key in paths:
        dense[parent] = dict(dense[parent])
        tables[f"{parent}/{key}"] = dense[parent][key]
        dense[parent][key] = None
    return dense, tables


def _join(dense: Mapping[str, Any], tables: Mapping[str, Any]) -> dict:
    out = dict(dense)
    for name, table in tables.items():
        parent, key = name.split("/")
        out[parent] = dict(out[parent])
        out[parent][key] = table
    return out


def init(params: Mapping[str, Any], learning_rate: float, table_optimizer: str) -> RowwiseState:
    """Zero state for `params` (packed); slots take each table's sharding."""
    rule = _rule(table_optimizer)
    dense, tables = _split(params, table_paths(params))

    def zeros(shape, like, dtype=jnp.float32):
        """Zeros of `shape` placed like `like`'s rows (a per-row slot keeps the row axis's
        sharding of its [N, w] table)."""
        z = jnp.zeros(shape, dtype)
        if not isinstance(like, jax.Array):
            return z
        sharding = like.sharding
        if isinstance(sharding, NamedSharding) and len(sharding.spec) > len(shape):
            sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[:len(shape)]))
        return jax.device_put(z, sharding)

    slots = {}
    for name, t in tables.items():
        if rule == "adam":
            slots[name] = {"m": zeros(np.shape(t), t), "v": zeros(np.shape(t), t),
                           "last": zeros(np.shape(t)[:1], t, jnp.int32)}
        else:
            slots[name] = {"acc": zeros(np.shape(t)[:1], t)}
    return RowwiseState(optax.adam(learning_rate).init(dense), slots, jnp.zeros((), jnp.int32))


def batch_slots(vocab_sizes, batch_size: int) -> int:
    """The dedupe slots of a batch: sum over the fields of min(batch_size, the field's rows),
    the most distinct rows `batch_size` examples can read and the static size of the rows a
    row-wise step gathers, catches up and writes back (`resolve_rows`)."""
    return sum(min(int(batch_size), int(v)) for v in vocab_sizes)


def resolve(table_optimizer: str, info, batch_size: int = 1024) -> str:
    """The table optimizer a run uses: "auto" picks "rowwise" when the tables hold at least
    AUTO_ROWS_PER_SLOT rows per dedupe slot of a batch (`batch_slots(info.vocab_sizes,
    batch_size)`, plus each own-table bag's min(batch_size * max_len, rows)), else "dense".

    The cost model: both steps run the same model on the batch; on top of it dense Adam reads
    and writes every table row with its two moments (a cost a * rows), the row-wise step
    dedupes the batch's ids and gathers, catches up and writes back its slots (c * slots).
    Row-wise is the faster from rows / slots = c / a on, whatever the batch: measured
    (experiments/results/table_scale.md, DeepFM, embeddings 16, 2 CPU cores) dense was the
    faster at 3.1 rows a slot (17k rows, batch 1024; 1.03x) and 1.1 (17k, batch 4096; 1.05x),
    row-wise at 4.5 (100k, batch 4096; 0.90x) and above; AUTO_ROWS_PER_SLOT = 4. Near the
    crossing the two steps are within a few percent of each other.
    """
    if table_optimizer not in TABLE_OPTIMIZERS:
        raise AfmError(f"table_optimizer must be one of {TABLE_OPTIMIZERS}, got "
                       f"{table_optimizer!r}")
    if table_optimizer != "auto":
        return table_optimizer
    bags = tuple(getattr(info, "bags", ()))
    rows = first_order_size(info.vocab_sizes, bags)
    slots = batch_slots(info.vocab_sizes, batch_size) + sum(
        min(int(batch_size) * int(b.max_len), int(b.vocab_size)) for b in bags if b.shares is None)
    return "rowwise" if rows >= AUTO_ROWS_PER_SLOT * slots else "dense"


def _rule(table_optimizer: str) -> str:
    if table_optimizer not in _RULES:
        raise AfmError(f"table_optimizer must be one of {TABLE_OPTIMIZERS}, got "
                       f"{table_optimizer!r}")
    return _RULES[table_optimizer]


def resolve_rows(params: Mapping[str, Any], model, cat):
    """Each table's unique rows read by a batch and the batch's ids resolved to positions in them.

    cat [B, Fc], or with bag fields the model input (`pooling.model_inputs`) -> ({"parent/key":
    unique rows [U] (padded with the table's row count, which no id reaches)}, resolved input
    {"raw": cat, "embed": [B, C], "linear": [B, C]} (and the bags, "bags" / "bag_len") as the
    model's packed lookup and first-order layer take it; C = Fc + the bags' max_len, the id
    columns of `PackedLayout.columns`). Duplicate ids, within a bag, across bags and with the
    single-valued ids of a shared table, resolve to one unique row, whose gradient autodiff
    then sums; a bag's padding slots resolve to the fill row (gathered as 0, its update
    dropped), so they touch no row.

    Without bags the dedupe is per field (`_dedupe_fields`), shared by the tables that hold a
    field with the same rows (DeepFM's packed table and first-order weights), and U = sum over
    the table's fields of min(B, the field's rows): the most rows a batch can read, fixed at
    trace time. With bags each table's columns take one `jnp.unique` (padding masked).
    """

    bags = tuple(getattr(model.info, "bags", ()))
    raw, bag_ids, bag_len = split_inputs(cat, bags)
    resolved: dict[str, Any] = {"raw": raw}
    if bag_ids:
        resolved["bags"], resolved["bag_len"] = bag_ids, bag_len
    uniques: dict[str, jax.Array] = {}
    real = real_columns(raw.shape[-1], bags, bag_len) if bags else None

    def unique(name: str, ids: jax.Array, rows: int, real=None) -> jax.Array:
        if real is not None:   # padding -> the fill value, one more distinct value at most
            ids = jnp.where(real, ids, rows)
        flat = ids.reshape(-1)
        # a batch reads at most min(its ids, the table's rows) distinct rows: the static size
        # bounds the gathered rows, their gradient and (over a mesh) its all-reduce
        size = min(flat.size, rows + (real is not None))
        u, inv = jnp.unique(flat, size=size, fill_value=rows, return_inverse=True)
        uniques[name] = u
        return inv.reshape(ids.shape).astype(jnp.int32)
    deduped: dict[tuple[int, ...], list] = {}

    def per_field(rows: tuple[int, ...]) -> list:
        if rows not in deduped:
            deduped[rows] = _dedupe_fields(raw, rows)
        return deduped[rows]

    def table(name: str, fields: list, offsets, n_rows: int) -> jax.Array:
        """The table's unique rows (its fields' in turn, invalid slots -> n_rows) and each
        field's ids as positions in them: [B, len(fields)]."""
        us, cols, base = [], [], 0
        for (u, valid, inv), off in zip(fields, offsets, strict=True):
            us.append(jnp.where(valid, u + int(off), n_rows))
            cols.append(inv + base)
            base += u.shape[0]
        uniques[name] = jnp.concatenate(us)
        return jnp.stack(cols, axis=1)

    embed = params.get("embed")
    if isinstance(embed, Mapping) and is_packed(embed):
        layout: PackedLayout = embed["layout"]
        if bags:   # bag columns: one unique over each width's columns, padding masked
            ids = _ids(layout, raw, bag_ids)                               # [B, C]
            cols: list[Any] = [jnp.zeros(raw.shape[:1], jnp.int32)] * ids.shape[-1]
            for w in layout.widths():
                members = layout.column_members(w)
                group = take_static(ids, members, axis=-1)                 # [B, G_w]
                group_real = None if real is None else take_static(real, members, axis=-1)
                inv = unique(f"embed/table_{w}", group, embed[f"table_{w}"].shape[0], group_real)
                for n, i in enumerate(members):
                    cols[i] = inv[:, n]
        else:      # single-valued fields: the per-field dedupe
            cols = [jnp.zeros(raw.shape[:1], jnp.int32)] * len(layout.fields)
            for w in layout.widths():
                members = layout.members(w)
                fields = per_field(tuple(layout.fields[i].rows for i in range(len(layout.fields))))
                inv = table(f"embed/table_{w}", [fields[i] for i in members],
                            [layout.fields[i].offset for i in members], embed[f"table_{w}"].shape[0])
                for n, i in enumerate(members):
                    cols[i] = inv[:, n]
        resolved["embed"] = jnp.stack(cols, axis=1) if cols else jnp.zeros_like(raw)
    linear = params.get("linear")
    if isinstance(linear, Mapping) and "weights" in linear:
        if bags:
            rows = first_order_rows(model.info.vocab_sizes, cat, bags, model.info.cat_names)
            resolved["linear"] = unique("linear/weights", rows, linear["weights"].shape[0], real)
        else:
            sizes = np.asarray(model.info.vocab_sizes, np.int64)
            resolved["linear"] = table("linear/weights", per_field(tuple(int(v) for v in sizes)),
                                       np.cumsum(sizes) - sizes, linear["weights"].shape[0])
    return uniques, resolved


def _dedupe_fields(cat: jax.Array, rows: tuple[int, ...], scan_rows: int | None = None) -> list:
    """Per field f of cat [B, Fc] (ids outside [0, rows[f]) read row 0): (u [S_f] its unique
    local rows, valid [S_f] which of them the batch read, inv [B] each id's position in u),
    S_f = min(B, rows[f]). Three ways, by the field's rows:

    - at most B rows: no dedupe. u is all its rows, inv the ids themselves and `valid` a
      scatter of the ids into [rows] (unread rows are dropped by the update, so they stay
      exactly as they are);
    - up to `scan_rows` (default SCAN_ROWS_PER_ID * B): sort-free. Each row's first reader, a scatter-min
      of the batch positions into [rows] (one fill of the field's rows, then O(B)); the first
      readers, counted in batch order, are the slots;
    - more: the fields are sorted together, one column each (one sort of [B, G] along the
      batch: B log B per field, not B*G log(B*G) for a table), and compacted to B slots.
    """
    b = cat.shape[0]
    scan_rows = SCAN_ROWS_PER_ID * b if scan_rows is None else scan_rows
    out: list[Any] = [None] * len(rows)
    for f, r in enumerate(rows):
        if r <= b:
            ids = in_vocab(cat[:, f], r).astype(jnp.int32)
            out[f] = (jnp.arange(r, dtype=jnp.int32),
                      jnp.zeros((r,), bool).at[ids].set(True), ids)
    for group, how in (([f for f, r in enumerate(rows) if b < r <= scan_rows], _first_readers),
                       ([f for f, r in enumerate(rows) if r > max(b, scan_rows)], _sorted)):
        if group:
            ids = in_vocab(jnp.take(cat, np.asarray(group), axis=1),
                           np.asarray([rows[f] for f in group])).astype(jnp.int32)  # [B, G]
            u, valid, inv = how(ids, [rows[f] for f in group])
            for n, f in enumerate(group):
                out[f] = (u[:, n], valid[:, n], inv[:, n])
    return out


# a field of up to this many rows per id of the batch dedupes sort-free (`_first_readers`),
# a larger one sorts (`_sorted`). Measured (experiments/results/rowwise_dedupe.md, 2 CPU
# cores, B = 1024-16384): the sort costs ~120-190 ns an id, filling the first-reader buffer
# ~1-1.7 ns a row (so ~100 rows an id break even; 64 leaves a margin for the scatter)
SCAN_ROWS_PER_ID = 64


def _first_readers(ids: jax.Array, rows: list[int]):
    """ids [B, G] (column g in [0, rows[g])) -> (u, valid, inv) [B, G] per column: each row's
    first reader by a scatter-min of the batch positions into one [sum rows] buffer."""
    b, g = ids.shape
    iota = jax.lax.broadcasted_iota(jnp.int32, (b, g), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (b, g), 1)
    flat = ids + np.concatenate([[0], np.cumsum(rows[:-1])]).astype(np.int32)
    first = jnp.full((int(sum(rows)),), b, jnp.int32).at[flat].min(iota)[flat]     # [B, G]
    new = first == iota
    pos = jnp.cumsum(new, axis=0, dtype=jnp.int32) - 1
    inv = jnp.take_along_axis(pos, first, axis=0)
    u = jnp.zeros((b, g), jnp.int32).at[jnp.where(new, pos, b), col].set(ids, mode="drop")
    return u, iota <= pos[-1:], inv


def _sorted(ids: jax.Array, rows: list[int]):
    """ids [B, G] -> (u, valid, inv) [B, G] per column, by one sort along the batch."""
    del rows
    b, g = ids.shape
    iota = jax.lax.broadcasted_iota(jnp.int32, (b, g), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (b, g), 1)
    srt, perm = jax.lax.sort((ids, iota), dimension=0, num_keys=1)
    new = jnp.concatenate([jnp.ones((1, g), bool), srt[1:] != srt[:-1]], axis=0)
    pos = jnp.cumsum(new, axis=0, dtype=jnp.int32) - 1                     # [B, G]
    inv = jnp.zeros((b, g), jnp.int32).at[perm, col].set(pos, unique_indices=True)
    u = jnp.zeros((b, g), jnp.int32).at[jnp.where(new, pos, b), col].set(srt, mode="drop")
    return u, iota <= pos[-1:], inv


def _loss(model, embed_l2: float):
    """(dense params, gathered rows, resolved ids, batch) -> (loss + L2, loss), the loss of
    `train.make_train_step` on the gathered rows."""
    def loss_fn(dense, subs, resolved, batch):
        params = _join(dense, subs)

        def one(c, n):
            return model.apply({"params": params}, c, n)

        loss = batch_loss(jax.vmap(one)(resolved, batch["num"]), batch)
        reg = 0.0
        if embed_l2 and "embed" in resolved and "embed" in params:
            reg = embed_l2 * rows_l2(params["embed"], resolved, batch.get("weight"))
        return loss + reg, loss

    return loss_fn


CATCHUP_STEPS = 16   # missed steps summed term by term; the tail past them in closed form


def catchup(last: jax.Array, count: jax.Array, b1: float, b2: float) -> jax.Array:
    """sum over the missed steps j = last+1 .. count-1 of (b1/sqrt(b2))^(j-last) *
    sqrt(1 - b2^j) / (1 - b1^j): times -lr * m / (sqrt(v) + eps) it is what dense Adam moves a
    row (moments m, v as left at step `last`) over the steps it had no gradient. Elementwise
    over `last` (int, any shape); `count` is the current step."""
    r = b1 / np.sqrt(b2)
    last = last.astype(jnp.float32)
    missed = count.astype(jnp.float32) - 1.0 - last
    # b^(last + k) = b^last * b^k: two powers per row, the b^k constants (not 2 per term)
    p1, p2 = b1 ** last, b2 ** last

    def bias(k):
        return jnp.sqrt(1.0 - p2 * b2 ** k) / (1.0 - p1 * b1 ** k)

    total = jnp.zeros_like(last)
    for i in range(1, CATCHUP_STEPS + 1):
        total += jnp.where(missed >= i, r ** i * bias(i), 0.0)
    # steps past CATCHUP_STEPS: a geometric sum in r, the bias term taken at the tail's mean
    # step (CATCHUP_STEPS + 1/(1-r) past `last`): within 0.8% of the exact sum in the first
    # steps of training (where sqrt(1 - b2^j) still grows fast), within 0.2% from step 500 on
    tail = missed - CATCHUP_STEPS
    geometric = r ** (CATCHUP_STEPS + 1) * (1.0 - r ** jnp.maximum(tail, 0.0)) / (1.0 - r)
    return total + jnp.where(tail > 0, geometric * bias(CATCHUP_STEPS + 1.0 / (1.0 - r)), 0.0)


def _adam_catchup(m, v, last, count, lr, b1, b2, eps):
    """(delta of the missed steps, m and v decayed over them) for rows with moments m, v [.., w]
    last updated at step `last` [..]; `count` is the current step (nothing is missed at
    last = count - 1)."""
    missed = (count - 1 - last).astype(jnp.float32)
    shape = (-1,) + (1,) * (m.ndim - 1)
    c = catchup(last, count, b1, b2).reshape(shape)
    delta = -lr * c * m / (jnp.sqrt(v) + eps)
    return delta, m * (b1 ** missed).reshape(shape), v * (b2 ** missed).reshape(shape)


def settle(params: Mapping[str, Any], state: RowwiseState, learning_rate: float,
           table_optimizer: str, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
           table_learning_rate: float | None = None) -> dict:
    """`params` with every table row's pending lazy-Adam tail applied (the steps since it was
    last read, as dense Adam would have moved it), for validation and the returned params:
    what dense Adam's params would be now, in buffers of their own. Neither `params` nor the
    state change; training goes on from them. Row-wise Adagrad has no tail: `params` come
    back as they are (the caller copies them if it keeps them past a donating step)."""
    if _rule(table_optimizer) != "adam":
        return params
    lr = learning_rate if table_learning_rate is None else table_learning_rate
    return _settle(dict(params), state, lr, b1, b2, eps)


@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _settle_tables(tables, slots, count, lr, b1, b2, eps):
    out = {}
    for k, t in tables.items():
        m, v, last = slots[k]["m"], slots[k]["v"], slots[k]["last"]
        # the step of `count` is done: catch up to count + 1 exclusive, i.e. through count
        delta, _, _ = _adam_catchup(m, v, last, count + 1, lr, b1, b2, eps)
        out[k] = t + delta.astype(t.dtype)
    return out


def _settle(params, state, lr, b1, b2, eps):
    dense, tables = _split(params, table_paths(params))
    return _join(jax.tree.map(jnp.copy, dense),
                 _settle_tables(tables, state.slots, state.count, lr, b1, b2, eps))


def make_step(model, learning_rate: float, table_optimizer: str = "rowwise",
              embed_l2: float = 0.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              table_learning_rate: float | None = None):
    """Jitted `(params, state, batch) -> (params, state, loss)` with row-wise table updates,
    donating params and state (tables and slots are updated in place). Params must be packed.
    table_learning_rate: the tables' rate (default `learning_rate`)."""
    rule = _rule(table_optimizer)
    table_lr = learning_rate if table_learning_rate is None else table_learning_rate
    tx = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    loss_fn = _loss(model, embed_l2)

    def update_rows(table, slot, rows, g, count):
        if rule == "adam":
            last = slot["last"].at[rows].get(mode="fill", fill_value=0)
            caught, m, v = _adam_catchup(slot["m"].at[rows].get(mode="fill", fill_value=0),
                                         slot["v"].at[rows].get(mode="fill", fill_value=0),
                                         last, count, table_lr, b1, b2, eps)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1 ** count.astype(jnp.float32))
            v_hat = v / (1 - b2 ** count.astype(jnp.float32))
            delta = caught - table_lr * m_hat / (jnp.sqrt(v_hat) + eps)
            slot = {"m": slot["m"].at[rows].set(m, mode="drop"),
                    "v": slot["v"].at[rows].set(v, mode="drop"),
                    # max(last, count) = count; written as a function of the rows read, so
                    # XLA orders the read before the in-place write instead of copying [N]
                    "last": slot["last"].at[rows].set(jnp.maximum(last, count.astype(jnp.int32)),
                                                      mode="drop")}
        else:
            g2 = (g * g).reshape(g.shape[0], -1).mean(-1)
            acc = slot["acc"].at[rows].get(mode="fill", fill_value=0) + g2
            scale = (table_lr / (jnp.sqrt(acc) + eps)).reshape((-1,) + (1,) * (g.ndim - 1))
            delta = -scale * g
            slot = {"acc": slot["acc"].at[rows].set(acc, mode="drop")}
        return table.at[rows].add(delta.astype(table.dtype), mode="drop"), slot

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state: RowwiseState, batch):
        dense, tables, uniques, loss, g_dense, g_subs = _grads(loss_fn, model, params, batch)
        updates, dense_state = tx.update(g_dense, state.dense, dense)
        dense = optax.apply_updates(dense, updates)
        count = state.count + 1
        slots = {}
        for k in tables:
            tables[k], slots[k] = update_rows(tables[k], state.slots[k], uniques[k], g_subs[k],
                                              count)
        return _join(dense, tables), RowwiseState(dense_state, slots, count), loss

    return step


def _grads(loss_fn, model, params, batch):
    """Gradients of the loss w.r.t. the dense params and each table's gathered unique rows."""
    dense, tables = _split(params, table_paths(params))
    uniques, resolved = resolve_rows(params, model, model_inputs(batch))
    subs = {k: tables[k].at[uniques[k]].get(mode="fill", fill_value=0) for k in tables}
    (_, loss), (g_dense, g_subs) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        dense, subs, resolved, batch)
    return dense, tables, uniques, loss, g_dense, g_subs


def table_grads(model, params: Mapping[str, Any], batch) -> dict[str, jax.Array]:
    """{"parent/key": gradient of the mean loss w.r.t. the table's unique rows read by `batch`}
    in the order of `resolve_rows`' unique rows (duplicate ids combined); for tests and tools."""
    step_loss = _loss(model, 0.0)
    return _grads(step_loss, model, params, batch)[5]
