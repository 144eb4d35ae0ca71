import Synchronization

/// Identifies one WebSocket connection on this gateway, unique for the process's life.
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    private static let counter = Atomic<UInt64>(0)

    /// A fresh id, never handed out before in this process.
    public static func next() -> ConnectionID {
        ConnectionID(rawValue: counter.wrappingAdd(1, ordering: .relaxed).newValue)
    }

    public var description: String { "c\(rawValue)" }
}
