"""X25519 / HKDF / AES-GCM wrappers and the AES-CTR mask PRG."""
from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedcollab.secure import keys as K
from fedcollab.secure import prg
from fedcollab.secure.errors import DecryptionError, MalformedMessageError
from fedcollab.secure.prg import FIRST_COUNTER, accumulate_masks, expand


def test_keys_agreement_gives_same_pairwise_key_on_both_sides() -> None:
    a, b = K.generate_private_key(), K.generate_private_key()
    key_ab = K.pairwise_key(K.agree(a, K.public_bytes(b)), 3, 9)
    key_ba = K.pairwise_key(K.agree(b, K.public_bytes(a)), 9, 3)
    assert key_ab == key_ba and len(key_ab) == 32


def test_keys_round_seeds_differ_per_round_and_match_per_pair() -> None:
    pair = os.urandom(32)
    assert K.round_seed(pair, 1, 2, 5) == K.round_seed(pair, 1, 5, 2)
    assert K.round_seed(pair, 1, 2, 5) != K.round_seed(pair, 2, 2, 5)


def test_keys_seal_open_round_trip() -> None:
    cipher = K.channel_cipher(os.urandom(32), 1, 2)
    blob = K.seal(cipher, b"share bytes", b"context")
    assert K.open_sealed(cipher, blob, b"context", what="test") == b"share bytes"


def test_keys_tampered_ciphertext_raises() -> None:
    cipher = K.channel_cipher(os.urandom(32), 1, 2)
    blob = bytearray(K.seal(cipher, b"share bytes", b"context"))
    blob[-1] ^= 1
    with pytest.raises(DecryptionError, match="authentication failed"):
        K.open_sealed(cipher, bytes(blob), b"context", what="test")


def test_keys_ciphertext_replayed_into_other_context_raises() -> None:
    cipher = K.channel_cipher(os.urandom(32), 1, 2)
    blob = K.seal(cipher, b"share bytes", b"round 1")
    with pytest.raises(DecryptionError, match="replayed"):
        K.open_sealed(cipher, blob, b"round 2", what="test")


def test_keys_short_ciphertext_raises() -> None:
    cipher = K.channel_cipher(os.urandom(32), 1, 2)
    with pytest.raises(DecryptionError, match="too short"):
        K.open_sealed(cipher, b"abc", b"", what="test")


@pytest.mark.parametrize("raw", [b"\x00" * 32, b"\x01" + b"\x00" * 31, b"\x00" * 31])
def test_keys_unusable_public_key_rejected(raw: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        K.agree(K.generate_private_key(), raw)


def test_prg_same_seed_same_mask_other_seed_other_mask() -> None:
    seed = os.urandom(32)
    a, b = expand(seed, 100, np.uint32), expand(seed, 100, np.uint32)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, expand(os.urandom(32), 100, np.uint32))


def test_prg_plus_and_minus_masks_cancel_with_wraparound() -> None:
    x = np.arange(50, dtype=np.uint64)
    seeds = [os.urandom(32) for _ in range(3)]
    masked = accumulate_masks(x.copy(), seeds, [])
    assert not np.array_equal(masked, x)
    assert np.array_equal(accumulate_masks(masked, [], seeds), x)


def test_prg_known_answer_is_aes256_ctr_keystream() -> None:
    # The first block is AES_k(0^96 || 2), computed here by the raw block cipher (ECB)
    key = bytes(range(32))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    first_block = ecb.update(FIRST_COUNTER) + ecb.finalize()
    assert expand(key, 4, np.uint32).tobytes() == first_block
    # and the whole stream is AES-256-CTR from that counter block
    ctr = Cipher(algorithms.AES(key), modes.CTR(FIRST_COUNTER)).encryptor()
    assert expand(key, 1001, np.uint64).tobytes() == ctr.update(bytes(8008))


def test_prg_long_streams_take_the_cipher_path_with_the_same_keystream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    short = expand(key, 999, np.uint32)
    monkeypatch.setattr(prg, "_GCM_LIMIT", 64)
    assert np.array_equal(expand(key, 999, np.uint32), short)
    acc = accumulate_masks(np.zeros(999, np.uint32), [key])
    assert np.array_equal(acc, short)


def test_prg_bad_seed_length_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"short", 4, np.uint32)
