package quicinitial

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
)

// The Initial salts (RFC 9001 section 5.2, RFC 9369 section 3.3.1).
var (
	saltV1 = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}
	saltV2 = []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9}
)

const (
	keyLen = 16 // AES-128
	ivLen  = 12 // the AEAD nonce
	tagLen = 16 // the AES-GCM tag
	// sampleLen is the ciphertext sample header protection is computed
	// over; it starts 4 bytes after the packet number's first byte, as if
	// the packet number were 4 bytes long (RFC 9001 section 5.4.2).
	sampleLen = 16
)

// initialKeys are one side's Initial packet protection keys for one
// Destination Connection ID (the client's original one).
type initialKeys struct {
	aead cipher.AEAD  // AES-128-GCM
	hp   cipher.Block // AES-128 for the header protection mask
	iv   [ivLen]byte
}

// The labels of RFC 9001 section 5.2's two Initial secrets.
const (
	labelClient = "client in"
	labelServer = "server in"
)

// clientInitialSecret is RFC 9001 section 5.2's client_initial_secret:
// HKDF-Extract(salt, DCID), then HKDF-Expand-Label "client in".
func clientInitialSecret(version uint32, dcid []byte) ([]byte, error) {
	return initialSecret(version, dcid, labelClient)
}

// initialSecret is the Initial secret of one side: label is labelClient
// or labelServer.
func initialSecret(version uint32, dcid []byte, label string) ([]byte, error) {
	salt := saltV1
	if version == Version2 {
		salt = saltV2
	}
	initial, err := hkdf.Extract(sha256.New, dcid, salt)
	if err != nil {
		return nil, fmt.Errorf("initial secret: %w", err)
	}
	return expandLabel(initial, label, sha256.Size)
}

// newInitialKeys derives the client's Initial keys: what its packets are
// protected with.
func newInitialKeys(version uint32, dcid []byte) (*initialKeys, error) {
	return newInitialKeysFor(version, dcid, labelClient)
}

// newInitialKeysFor derives the key, IV and header protection key from
// one side's Initial secret; v2 uses its own labels (RFC 9369 section
// 3.3.2) so that a v1 parser cannot read v2 Initials by accident.
func newInitialKeysFor(version uint32, dcid []byte, side string) (*initialKeys, error) {
	secret, err := initialSecret(version, dcid, side)
	if err != nil {
		return nil, err
	}
	prefix := "quic "
	if version == Version2 {
		prefix = "quicv2 "
	}
	key, err := expandLabel(secret, prefix+"key", keyLen)
	if err != nil {
		return nil, err
	}
	iv, err := expandLabel(secret, prefix+"iv", ivLen)
	if err != nil {
		return nil, err
	}
	hpKey, err := expandLabel(secret, prefix+"hp", keyLen)
	if err != nil {
		return nil, err
	}
	k := &initialKeys{}
	copy(k.iv[:], iv)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("packet key: %w", err)
	}
	if k.aead, err = cipher.NewGCM(block); err != nil {
		return nil, fmt.Errorf("packet AEAD: %w", err)
	}
	if k.hp, err = aes.NewCipher(hpKey); err != nil {
		return nil, fmt.Errorf("header protection key: %w", err)
	}
	return k, nil
}

// expandLabel is TLS 1.3's HKDF-Expand-Label (RFC 8446 section 7.1) with
// an empty context, over SHA-256 (the hash of the Initial cipher suite).
func expandLabel(secret []byte, label string, length int) ([]byte, error) {
	const prefix = "tls13 "
	info := make([]byte, 0, 2+1+len(prefix)+len(label)+1)
	info = append(info, byte(length>>8), byte(length), byte(len(prefix)+len(label)))
	info = append(info, prefix...)
	info = append(info, label...)
	info = append(info, 0) // empty context
	out, err := hkdf.Expand(sha256.New, secret, string(info), length)
	if err != nil {
		return nil, fmt.Errorf("expand label %q: %w", label, err)
	}
	return out, nil
}

// nonce is the AEAD nonce of packet number pn: the IV XORed with the
// packet number, left-padded to the IV's length (RFC 9001 section 5.3).
func (k *initialKeys) nonce(pn uint64) [ivLen]byte {
	n := k.iv
	for i := range 8 {
		n[ivLen-1-i] ^= byte(pn >> (8 * i))
	}
	return n
}
