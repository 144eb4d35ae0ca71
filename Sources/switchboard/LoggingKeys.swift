/// Metadata keys for the log lines `switchboard serve` writes itself, in one place.
enum LoggingKeys {
    static let gatewayID = "switchboard.gateway.id"
    /// The `host:port` the gateway listens on.
    static let listenAddress = "address"
    /// The `--backplane` URL, its password redacted.
    static let backplane = "backplane"
    static let history = "history"
    static let presence = "presence"
    static let openFilesLimit = "open_files_limit"
    /// Why something optional (the demo page) is left out.
    static let reason = "reason"
}
