import Synchronization

/// Identifies one WebSocket connection on this gateway, unique for the process's life.
package struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    package let rawValue: UInt64

    package init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    private static let counter = Atomic<UInt64>(0)

    /// A fresh id, never handed out before in this process.
    package static func next() -> ConnectionID {
        ConnectionID(rawValue: counter.wrappingAdd(1, ordering: .relaxed).newValue)
    }

    package var description: String { "c\(rawValue)" }
}
