// Seal and open rates of the SDK for a 2 KiB message to 4 recipients, the same workload as
// the Rust envelope bench (envelope/benches/seal.rs), so the figures sit side by side.
// Runs in Node and in a browser page; `sdk` is the package's module.
export async function sealOpen(sdk, n) {
  const payload = new Uint8Array(2048).fill(0x78);
  const sender = await sdk.generateDeviceKeys();
  const readers = [];
  for (let i = 0; i < 4; i++) readers.push(await sdk.generateDeviceKeys());
  const recipients = readers.map((r) => ({ jwk: r.encryptionJwk, thumbprint: r.encryptionKid }));
  const binding = { episode: '4b0c8a51-5d43-4d0e-9a57-2f2a5f0a7c11', message: '9d2e6a0e-1f57-4c55-8a8e-0b9b6f5b8e21', kind: 'feedback', sender: sender.deviceId };
  const signer = { jwk: sender.signingJwk, thumbprint: sender.deviceId };
  for (let i = 0; i < 20; i++) await sdk.seal(payload, binding, sender, recipients); // warm-up
  let started = performance.now();
  for (let i = 0; i < n; i++) await sdk.seal(payload, binding, sender, recipients);
  const seal = (n * 1000) / (performance.now() - started);
  const sealed = await sdk.seal(payload, binding, sender, recipients);
  started = performance.now();
  for (let i = 0; i < n; i++) await (await sdk.Envelope.parse(sealed)).open(readers[0], signer);
  const open = (n * 1000) / (performance.now() - started);
  return { seal_per_s: Math.round(seal), open_per_s: Math.round(open), n };
}
