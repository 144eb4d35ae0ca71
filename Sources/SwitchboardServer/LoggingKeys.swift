/// Metadata keys for every log line the server writes, in one place.
enum LoggingKeys {
    static let gatewayID = "switchboard.gateway.id"
    static let connectionID = "switchboard.connection.id"
    static let userID = "switchboard.user.id"
    static let roomID = "switchboard.room.id"
    static let address = "switchboard.backplane.address"
    static let closeCode = "switchboard.close.code"
    static let errorType = "error.type"
    /// Why a handshake was refused (never the credential itself).
    static let authFailure = "switchboard.auth.failure"
    /// Connections a drain starts with, and those still open when it gave up waiting.
    static let drainConnections = "switchboard.drain.connections"
    static let drainLeftOpen = "switchboard.drain.left_open"
    /// A JWKS fetch: the URL (without credentials), the key ids it holds, what triggered it
    /// (`interval`, `unknown_kid`), why it failed and how many keys stayed in force.
    static let jwksURL = "switchboard.jwks.url"
    static let jwksKeyIDs = "switchboard.jwks.kids"
    static let jwksTrigger = "switchboard.jwks.trigger"
    static let jwksError = "switchboard.jwks.error"
    static let jwksKept = "switchboard.jwks.kept"
    /// Users a presence sync or event concerns.
    static let presenceUsers = "switchboard.presence.users"
}
