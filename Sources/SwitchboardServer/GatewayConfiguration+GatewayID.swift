extension GatewayConfiguration {
    /// Checks a gateway id (``gatewayID``): it names the gateway's RabbitMQ queue
    /// (`switchboard.gateway.<id>`) and its Redis client name, and appears in `welcome`
    /// frames, so it is 1…64 characters of `[A-Za-z0-9._-]`.
    /// - Throws: ``InvalidGatewayID`` when `id` breaks that rule.
    public static func validateGatewayID(_ id: String) throws(InvalidGatewayID) {
        let allowed = id.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: ".")
        }
        guard !id.isEmpty, id.utf8.count <= 64, allowed else { throw InvalidGatewayID(id: id) }
    }
}

/// A gateway id that breaks the rule of ``GatewayConfiguration/validateGatewayID(_:)``.
public struct InvalidGatewayID: Error, Sendable, Equatable, CustomStringConvertible {
    /// The rule, as `--gateway-id`'s error states it.
    public static let rule = "1…64 characters of [A-Za-z0-9._-]"

    /// The id that was refused.
    public let id: String

    public init(id: String) {
        self.id = id
    }

    public var description: String { "gateway id \(String(reflecting: id)) must be \(Self.rule)" }
}
