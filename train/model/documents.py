"""How a packed batch is split into documents, in every form a layer needs, each computed once per forward.

A window of training data packs several documents back to back; `doc_ids_BT` [B, T] gives each token's
document (numbered from 0 inside the window). Attention must stay inside a document, positions restart
at each document start, and recurrent mixers reset their state there. `Transformer.hidden_states`
wraps `doc_ids_BT` in one `Documents` for the forward and hands it to every layer, so what several
layers need (positions, the reset flags, a mask for a given window) is derived once and shared, as
torchtitan's decoder builds its attention masks once per forward.

A mask comes in two forms: `dense_mask` (boolean [B, 1, T, T], for SDPA: the CPU path and the reference)
and `block_mask` (a FlexAttention BlockMask, arXiv 2412.05496: per 128x128 tile, skipped, full, or
partial, so attention costs only the tiles that documents and windows leave). Without documents the
causal (and windowed) masks depend only on the length: `causal_mask` and `causal_block_mask`.

A split sequence: when the window's tokens are spread over several devices (context parallelism, set on
the Transformer from outside as `sequence_split`), a forward holds only some of them, and `Documents` is
built with the split, an object with
    query_index(T, device) -> [T]   the window position of each of this forward's T tokens
    key_index(T, device)   -> [L]   the window position of each token of `gather`'s result
    gather(x, dim)         -> x of all L tokens along `dim` (autograd: its backward sums the gradients back)
Positions and masks then use window positions: a query at window position i sees the keys at positions
j <= i (inside the window, in its document), whichever device they came from, and attention runs over
the gathered keys and values (`keys`). The linear mixers (recurrent scans) need three more:
    pieces                 how many runs of consecutive window tokens this forward holds, one after another
    previous(x, n)         -> [B, pieces, n, ...] the n window tokens before each run (zeros before the
                           window's start): a short convolution's left context (causal_conv.py)
    to_heads(x_BHTX)       -> [B, H / devices, window, X] every window token, in window order, of this
                           device's share of the heads; `to_tokens` is its inverse: a scan then runs over
                           the whole window, head by head (linear_scan.scan_window)
Each is differentiable: the backward sends the gradients back to the devices that hold the tokens.
"""

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, and_masks, create_block_mask


def cached_property(method):
    """A property computed on first use and kept in the instance: functools.cached_property without the
    lock Python 3.11's takes, which torch.compile cannot trace (a compiled block reading a Documents
    property failed there)."""

    @functools.wraps(method)
    def get(self):
        if method.__name__ not in self.__dict__:
            self.__dict__[method.__name__] = method(self)
        return self.__dict__[method.__name__]

    return property(get)


class Documents:
    def __init__(self, doc_ids_BT: torch.Tensor, split=None):
        self.doc_ids_BT = doc_ids_BT
        self.split = split  # None: the whole window is here; else how it is spread (module docstring)
        self.masks: dict = {}  # (kind, window or n) -> the mask or ids, built on first use

    @cached_property
    def query_index_T(self) -> torch.Tensor:
        """Window position of each token of this forward."""
        T, device = self.doc_ids_BT.shape[1], self.doc_ids_BT.device
        return torch.arange(T, device=device) if self.split is None else self.split.query_index(T, device)

    @cached_property
    def key_index_L(self) -> torch.Tensor:
        """Window position of each key attention sees (`keys`)."""
        if self.split is None:
            return self.query_index_T
        return self.split.key_index(self.doc_ids_BT.shape[1], self.doc_ids_BT.device)

    @cached_property
    def key_doc_ids_BL(self) -> torch.Tensor:
        return self.doc_ids_BT if self.split is None else self.split.gather(self.doc_ids_BT, 1)

    def keys(self, x_BGTX: torch.Tensor) -> torch.Tensor:
        """Keys or values [B, G, T, X] of this forward's tokens -> those of every token attention sees [B, G, L, X]."""
        return x_BGTX if self.split is None else self.split.gather(x_BGTX, 2)

    def previous_doc_ids(self, n: int) -> torch.Tensor:
        """[B, pieces, n]: the documents of the n window tokens before each run of this forward's tokens
        (a split sequence; a convolution's left context), gathered once per forward and n."""
        key = ("previous", n)
        if key not in self.masks:
            self.masks[key] = self.split.previous(self.doc_ids_BT, n)
        return self.masks[key]

    @cached_property
    def starts_BT(self) -> torch.Tensor:
        """True where a document starts (always at t = 0)."""
        starts_BT = torch.ones_like(self.doc_ids_BT, dtype=torch.bool)
        starts_BT[:, 1:] = self.doc_ids_BT[:, 1:] != self.doc_ids_BT[:, :-1]
        return starts_BT

    @cached_property
    def resets_BT(self) -> torch.Tensor:
        """True at a document start after the first token: where a recurrent state is cleared."""
        resets_BT = self.starts_BT.clone()
        resets_BT[:, 0] = False
        return resets_BT

    @cached_property
    def window(self) -> "Documents":
        """The documents of the whole window in window order (this forward's own without a split)."""
        if self.split is None:
            return self
        window_BL = torch.empty_like(self.key_doc_ids_BL)
        window_BL[:, self.key_index_L] = self.key_doc_ids_BL
        return Documents(window_BL)

    @cached_property
    def positions_BT(self) -> torch.Tensor:
        """Position of each token inside its document: its index minus the index of its document's start."""
        if self.split is not None:  # from the whole window's documents
            return self.window.positions_BT[:, self.query_index_T]
        B, T = self.doc_ids_BT.shape
        index_BT = torch.arange(T, device=self.doc_ids_BT.device).expand(B, T)
        return index_BT - torch.where(self.starts_BT, index_BT, 0).cummax(dim=1).values

    @cached_property
    def seq_idx_BT(self) -> torch.Tensor:
        """int32 index of each token's document in its row, counted from the starts (0, 1, ...): the
        `seq_idx` of mamba_ssm's SSD and causal_conv1d, which compare neighbours' values."""
        return torch.cumsum(self.starts_BT, dim=1, dtype=torch.int32) - 1

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:
        """int64 [N+1]: where each of the N documents of the flattened batch (B*T tokens, row after row)
        starts, then B*T; fla's varlen kernels take it with the batch flattened to B = 1. Its length is
        known only on the device, so building it costs one device->host sync (torch.nonzero), once per
        forward for every layer; no maximum length is computed (fla does not take one)."""
        starts_L = self.starts_BT.flatten()
        end_1 = torch.full((1,), starts_L.numel(), dtype=torch.int64, device=starts_L.device)
        return torch.cat([starts_L.nonzero().flatten(), end_1])

    def dense_mask(self, window: int | None = None) -> torch.Tensor:
        """Boolean [B, 1, T, L]: True where query t may see key l (causal, in the window, same document);
        L = T unless the sequence is split (then the keys are `keys`' tokens)."""
        key = ("dense", window)
        if key not in self.masks:
            same_doc_BTL = self.doc_ids_BT[:, :, None] == self.key_doc_ids_BL[:, None, :]
            self.masks[key] = (position_mask(self.query_index_T, self.key_index_L, window) & same_doc_BTL)[:, None]
        return self.masks[key]

    def block_mask(self, window: int | None = None) -> BlockMask:
        """The same mask as `dense_mask` as a FlexAttention BlockMask, built once per forward and window."""
        key = ("block", window)
        if key not in self.masks:
            doc_ids_BT = self.doc_ids_BT

            def same_document(b, h, q_idx, kv_idx):
                return doc_ids_BT[b, q_idx] == doc_ids_BT[b, kv_idx]

            B, T = doc_ids_BT.shape
            self.masks[key] = build_block_mask(and_masks(causal_mask_mod(window), same_document), B, T, doc_ids_BT.device)
        return self.masks[key]


def causal_mask(T: int, L: int, start: int, device, window: int | None = None) -> torch.Tensor:
    """Boolean [T, L]: True where query t (at position start + t) may see key l: causal and in the window
    (a query sees itself and the window-1 keys before it)."""
    return position_mask(torch.arange(start, start + T, device=device), torch.arange(L, device=device), window)


def position_mask(q_idx_T: torch.Tensor, k_idx_L: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Boolean [T, L]: True where the query at position q_idx[t] may see the key at position k_idx[l]."""
    q_idx_T1, k_idx_1L = q_idx_T[:, None], k_idx_L[None, :]
    allowed_TL = k_idx_1L <= q_idx_T1
    if window is not None:
        allowed_TL = allowed_TL & (q_idx_T1 - k_idx_1L < window)
    return allowed_TL


def causal_mask_mod(window: int | None = None):
    """FlexAttention mask_mod of `causal_mask` (start 0): key kv_idx <= query q_idx, and q_idx - kv_idx < window."""

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    if window is None:
        return causal

    def in_window(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < window

    return and_masks(causal, in_window)


# (T, window, device) -> BlockMask: a mask without documents is the same for every batch of a length
_CAUSAL_BLOCK_MASKS: dict = {}


def causal_block_mask(T: int, device, window: int | None = None) -> BlockMask:
    """The BlockMask of `causal_mask(T, T, 0, device, window)`, broadcast over batch and heads and kept
    across forwards."""
    key = (T, window, torch.device(device))
    if key not in _CAUSAL_BLOCK_MASKS:
        _CAUSAL_BLOCK_MASKS[key] = build_block_mask(causal_mask_mod(window), None, T, torch.device(device))
    return _CAUSAL_BLOCK_MASKS[key]


_compiled_create_block_mask = None


def build_block_mask(mask_mod, B: int | None, T: int, device: torch.device) -> BlockMask:
    """create_block_mask over [B, all heads, T, T]. Eager, it evaluates mask_mod on the whole [B, 1, T, T]
    grid at once (int64 index temporaries: GiBs at 32k); compiled, tile by tile, so off the CPU it goes
    through one lazily compiled instance (torchtitan compiles create_block_mask once at module level).
    The CPU stays eager: short test sequences, no compiler needed. Inside a compiled block (train.compile)
    the plain call is already compiled with the block."""
    global _compiled_create_block_mask
    build = create_block_mask
    if device.type != "cpu" and not torch.compiler.is_compiling():
        if _compiled_create_block_mask is None:
            _compiled_create_block_mask = torch.compile(create_block_mask)
        build = _compiled_create_block_mask
    return build(mask_mod, B, None, T, T, device=device)


def is_split(documents: Documents | None) -> bool:
    """True when this forward holds only part of each window (context parallelism)."""
    return documents is not None and documents.split is not None


def check_no_documents_with_cache(documents, cache) -> None:
    if documents is not None and cache is not None:
        raise ValueError("doc_ids cannot be combined with a decoding cache (decode one document at a time)")
