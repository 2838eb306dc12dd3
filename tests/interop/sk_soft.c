/*
 * A FIDO security key in software for OpenSSH's SecurityKeyProvider (sk-api 0x000a0000,
 * OpenSSH 8.9 to 9.x), so tests can log in with ed25519-sk and ecdsa-sk keys without
 * hardware. Written for trissh's tests from OpenSSH's PROTOCOL.u2f and sk-api.h contract:
 * the key handle is the private key (PKCS#8 DER), and a signature covers
 * SHA256(application) || flags || uint32 counter || SHA256(message).
 *
 * The flags a real key returns depend on a touch and a PIN; here they are what OpenSSH
 * asks for (presence unless the key was made with no-touch-required, verification when a
 * PIN is given; like a real key, one made with verify-required asks for the PIN), unless
 * TRISSH_SK_FLAGS (a number) says otherwise. NEVER a real key.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#define SSH_SK_VERSION_MAJOR 0x000a0000
#define SSH_SK_ECDSA 0x00
#define SSH_SK_ED25519 0x01
#define SSH_SK_USER_PRESENCE_REQD 0x01
#define SSH_SK_USER_VERIFICATION_REQD 0x04
#define SSH_SK_ERR_GENERAL -1
#define SSH_SK_ERR_UNSUPPORTED -2
#define SSH_SK_ERR_PIN_REQUIRED -3

struct sk_enroll_response {
	uint8_t flags;
	uint8_t *public_key;
	size_t public_key_len;
	uint8_t *key_handle;
	size_t key_handle_len;
	uint8_t *signature;
	size_t signature_len;
	uint8_t *attestation_cert;
	size_t attestation_cert_len;
	uint8_t *authdata;
	size_t authdata_len;
};

struct sk_sign_response {
	uint8_t flags;
	uint32_t counter;
	uint8_t *sig_r;
	size_t sig_r_len;
	uint8_t *sig_s;
	size_t sig_s_len;
};

struct sk_resident_key;
struct sk_option;

uint32_t sk_api_version(void);
int sk_enroll(uint32_t alg, const uint8_t *challenge, size_t challenge_len,
    const char *application, uint8_t flags, const char *pin,
    struct sk_option **options, struct sk_enroll_response **enroll_response);
int sk_sign(uint32_t alg, const uint8_t *data, size_t data_len,
    const char *application, const uint8_t *key_handle, size_t key_handle_len,
    uint8_t flags, const char *pin, struct sk_option **options,
    struct sk_sign_response **sign_response);
int sk_load_resident_keys(const char *pin, struct sk_option **options,
    struct sk_resident_key ***rks, size_t *nrks);

uint32_t
sk_api_version(void)
{
	return SSH_SK_VERSION_MAJOR;
}

static uint8_t *
copy(const uint8_t *data, size_t len)
{
	uint8_t *out = malloc(len ? len : 1);

	if (out != NULL && len)
		memcpy(out, data, len);
	return out;
}

int
sk_enroll(uint32_t alg, const uint8_t *challenge, size_t challenge_len,
    const char *application, uint8_t flags, const char *pin,
    struct sk_option **options, struct sk_enroll_response **enroll_response)
{
	struct sk_enroll_response *response;
	EVP_PKEY *key;
	uint8_t public_key[65], *der = NULL;
	size_t public_len = sizeof(public_key);
	int der_len, ok;

	(void)challenge; (void)challenge_len; (void)application; (void)pin; (void)options;
	*enroll_response = NULL;
	if (alg == SSH_SK_ED25519)
		key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	else if (alg == SSH_SK_ECDSA)
		key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	else
		return SSH_SK_ERR_UNSUPPORTED;
	if (key == NULL)
		return SSH_SK_ERR_GENERAL;
	if (alg == SSH_SK_ED25519)
		ok = EVP_PKEY_get_raw_public_key(key, public_key, &public_len);
	else
		ok = EVP_PKEY_get_octet_string_param(key, "encoded-pub-key", public_key,
		    sizeof(public_key), &public_len);
	der_len = i2d_PrivateKey(key, &der);
	EVP_PKEY_free(key);
	response = calloc(1, sizeof(*response));
	if (!ok || der_len <= 0 || response == NULL) {
		OPENSSL_free(der);
		free(response);
		return SSH_SK_ERR_GENERAL;
	}
	response->flags = flags;
	response->public_key = copy(public_key, public_len);
	response->public_key_len = public_len;
	response->key_handle = copy(der, (size_t)der_len);
	response->key_handle_len = (size_t)der_len;
	response->signature = copy(NULL, 0); /* no attestation */
	OPENSSL_free(der);
	*enroll_response = response;
	return 0;
}

int
sk_sign(uint32_t alg, const uint8_t *data, size_t data_len,
    const char *application, const uint8_t *key_handle, size_t key_handle_len,
    uint8_t flags, const char *pin, struct sk_option **options,
    struct sk_sign_response **sign_response)
{
	struct sk_sign_response *response;
	const unsigned char *handle = key_handle;
	const char *forced = getenv("TRISSH_SK_FLAGS");
	uint8_t message[32 + 1 + 4 + 32], signature[128];
	size_t signature_len = sizeof(signature);
	const BIGNUM *r, *s;
	ECDSA_SIG *ecdsa = NULL;
	const unsigned char *der = signature;
	EVP_MD_CTX *ctx;
	EVP_PKEY *key;
	uint32_t counter = 0x01020304;
	int ok;

	(void)options;
	*sign_response = NULL;
	if ((flags & SSH_SK_USER_VERIFICATION_REQD) && (pin == NULL || *pin == '\0'))
		return SSH_SK_ERR_PIN_REQUIRED;
	key = d2i_AutoPrivateKey(NULL, &handle, (long)key_handle_len);
	response = calloc(1, sizeof(*response));
	if (key == NULL || response == NULL) {
		EVP_PKEY_free(key);
		free(response);
		return SSH_SK_ERR_GENERAL;
	}
	response->flags = flags & SSH_SK_USER_PRESENCE_REQD;
	if (pin != NULL && *pin != '\0')
		response->flags |= SSH_SK_USER_VERIFICATION_REQD;
	if (forced != NULL)
		response->flags = (uint8_t)strtoul(forced, NULL, 0);
	response->counter = counter;
	SHA256((const unsigned char *)application, strlen(application), message);
	message[32] = response->flags;
	message[33] = counter >> 24; message[34] = counter >> 16;
	message[35] = counter >> 8; message[36] = counter;
	SHA256(data, data_len, message + 37);
	ctx = EVP_MD_CTX_new();
	ok = ctx != NULL &&
	    EVP_DigestSignInit(ctx, NULL, alg == SSH_SK_ED25519 ? NULL : EVP_sha256(), NULL,
	    key) == 1 &&
	    EVP_DigestSign(ctx, signature, &signature_len, message, sizeof(message)) == 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(key);
	if (ok && alg == SSH_SK_ED25519) {
		response->sig_r = copy(signature, signature_len);
		response->sig_r_len = signature_len;
	} else if (ok && (ecdsa = d2i_ECDSA_SIG(NULL, &der, (long)signature_len)) != NULL) {
		ECDSA_SIG_get0(ecdsa, &r, &s);
		response->sig_r_len = (size_t)BN_num_bytes(r);
		response->sig_s_len = (size_t)BN_num_bytes(s);
		response->sig_r = calloc(1, response->sig_r_len);
		response->sig_s = calloc(1, response->sig_s_len);
		if (response->sig_r != NULL && response->sig_s != NULL) {
			BN_bn2bin(r, response->sig_r);
			BN_bn2bin(s, response->sig_s);
		} else
			ok = 0;
		ECDSA_SIG_free(ecdsa);
	} else
		ok = 0;
	if (!ok) {
		free(response->sig_r);
		free(response->sig_s);
		free(response);
		return SSH_SK_ERR_GENERAL;
	}
	*sign_response = response;
	return 0;
}

int
sk_load_resident_keys(const char *pin, struct sk_option **options,
    struct sk_resident_key ***rks, size_t *nrks)
{
	(void)pin; (void)options; (void)rks; (void)nrks;
	return SSH_SK_ERR_UNSUPPORTED;
}
