/// Metadata keys for every log line the server writes, in one place.
enum LoggingKeys {
    static let gatewayID = "switchboard.gateway.id"
    static let connectionID = "switchboard.connection.id"
    static let userID = "switchboard.user.id"
    static let roomID = "switchboard.room.id"
    static let address = "switchboard.backplane.address"
    static let closeCode = "switchboard.close.code"
    static let errorType = "error.type"
}
