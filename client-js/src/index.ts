// @icbt-gateway/client: the browser and Node client of icbt-gateway, on Web Crypto alone.
// A reader starts at `Client`.

export { Client, STREAM_START, type Auth, type ClientOptions, type MessageView, type StreamEntry, type StreamEvent, type SealedSend, type Received, type AttachmentRef } from './client.js';
export { ACCESS_RECORD_FIELDS, accessRecordLeaf } from './accesslog.js';
export {
  ACCESS_LOG_ORIGIN,
  KEY_LOG_ORIGIN,
  keyId,
  parseCheckpoint,
  parseNote,
  parseVerifierKey,
  verifierKey,
  verifyCheckpoint,
  verifyCheckpointNote,
  type Checkpoint,
  type NoteSignature,
} from './checkpoint.js';
export { parseContent, questionnaireContent, textContent, ITEMS, type Content, type Instrument } from './content.js';
export { activeAt, checkConsistency, Directory, verifyDirectory, type KnownDevice, type TreeHead } from './directory.js';
export { DpopKey } from './dpop.js';
export { b64, b64url, unb64, unb64url } from './encoding.js';
export { Envelope, seal, SignedMessage, DEFAULT_LIMITS, type Binding, type Kind, type Limits, type Opened } from './envelope.js';
export { ContentError, DirectoryError, EnvelopeError, GatewayError, IcbtError, mayRetry, NetworkError, StreamEndedError } from './errors.js';
export { checkPublicJwk, thumbprint, type PublicJwk, type PublicKey } from './jwk.js';
export { deviceBody, fromPrivateJson, generateDeviceKeys, toPrivateJson, type DeviceKeys } from './keys.js';
export { leafHash, nodeHash, verifyConsistency, verifyInclusion } from './merkle.js';
export { safetyNumber } from './safety.js';
export { deviceKeysIn, IndexedDbStore, MemoryStore, type Store } from './store.js';
