"""X25519 / HKDF / AES-GCM wrappers and the AES-CTR mask PRG."""
from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

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


def test_keys_open_names_the_ciphertext_only_when_it_fails() -> None:
    cipher = K.channel_cipher(os.urandom(32), 1, 2)
    blob = K.seal(cipher, b"share bytes", b"context")
    named: list[str] = []

    def name() -> str:
        named.append("asked")
        return "round 3: share from participant 2"
    assert K.open_sealed(cipher, blob, b"context", what=name) == b"share bytes"
    assert named == []
    with pytest.raises(DecryptionError, match=r"^round 3: share from participant 2: AES-GCM"):
        K.open_sealed(cipher, blob, b"other", what=name)
    with pytest.raises(DecryptionError, match=r"^round 3: share from participant 2: cipher"):
        K.open_sealed(cipher, blob[:10], b"context", what=name)


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
    # The first block is AES_k(0^128), computed here by the raw block cipher (ECB)
    key = bytes(range(32))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    first_block = ecb.update(FIRST_COUNTER) + ecb.finalize()
    assert FIRST_COUNTER == bytes(16)
    assert expand(key, 4, np.uint32).tobytes() == first_block
    # and the next block is AES_k(0^127 || 1): counter mode, big-endian increment
    second = _ecb_block(key, (1).to_bytes(16, "big"))
    assert expand(key, 8, np.uint32).tobytes()[16:] == second


def _ecb_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def test_prg_keystream_matches_nist_sp800_38a_ctr_aes256() -> None:
    # NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt, blocks 1 and 2
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d7781"
                        "1f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a"
                          "ae2d8a571e03ac9c9eb76fac45af8e51")
    cipher = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228"
                           "f443e3ca4d62b59aca84e990cacaf5c5")
    stream = prg.keystream(key, 32, counter=counter)
    assert bytes(p ^ s for p, s in zip(plain, stream)) == cipher


def test_prg_masks_accumulate_the_same_keystream_as_expand() -> None:
    key = os.urandom(32)
    acc = accumulate_masks(np.zeros(999, np.uint32), [key])
    assert np.array_equal(acc, expand(key, 999, np.uint32))


def test_prg_bad_seed_length_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"short", 4, np.uint32)
    with pytest.raises(ValueError, match="32 bytes"):  # AES would take a 16-byte key
        accumulate_masks(np.zeros(4, np.uint32), [os.urandom(32), b"k" * 16])


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("batch_bytes", [1, 64, 1 << 20])  # one row, a few, all at once
def test_prg_batched_masks_equal_one_expand_per_seed(
        monkeypatch: pytest.MonkeyPatch, dtype: type, batch_bytes: int) -> None:
    # the keystreams are summed in batches of rows: whatever the batch, the result is
    # acc + sum(expand(plus)) - sum(expand(minus)) modulo 2**bits, as one add per seed
    monkeypatch.setattr(prg, "_BATCH_BYTES", batch_bytes)
    rng = np.random.default_rng(7)
    acc = rng.integers(0, np.iinfo(dtype).max, 13, dtype=dtype, endpoint=True)
    plus, minus = [os.urandom(32) for _ in range(5)], [os.urandom(32) for _ in range(4)]
    want = acc.copy()
    for seed in plus:
        want += expand(seed, acc.size, dtype)
    for seed in minus:
        want -= expand(seed, acc.size, dtype)
    assert np.array_equal(accumulate_masks(acc, plus, minus), want)
    assert np.array_equal(acc, want)  # in place
    assert np.array_equal(accumulate_masks(np.zeros(0, dtype), plus, minus), np.zeros(0, dtype))


def test_round_seed_is_hkdf_expand_with_round_and_pair_in_info() -> None:
    import hashlib
    import hmac
    import struct

    # RFC 5869 A.1: HKDF-Expand (SHA-256) from a given PRK
    prk = bytes.fromhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
    okm = HKDFExpand(algorithm=hashes.SHA256(), length=42,
                     info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")).derive(prk)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c"
                         "5db02d56ecc4c5bf34007208d5b887185865")
    # a 32-byte seed is T(1) = HMAC(PRK, info || 0x01), info = label || round || pair
    pair = os.urandom(32)
    info = b"fedcollab/secagg/v1/mask-seed" + struct.pack(">QII", 7, 2, 5)
    expected = hmac.new(pair, info + b"\x01", hashlib.sha256).digest()
    assert K.round_seed(pair, 7, 5, 2) == expected == K.round_seed(pair, 7, 2, 5)
