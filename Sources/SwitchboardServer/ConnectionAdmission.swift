import SwitchboardProtocol
import Synchronization

/// The connection caps of one gateway, decided in one step: may this handshake become
/// a WebSocket, given how many this gateway, this user and this client address hold?
///
/// Checking a count and incrementing it later (as the registry does when the session
/// starts) lets parallel handshakes of one token all pass the check; here the check
/// and the reservation are one mutation under one lock. A reservation is held for the
/// lifetime of the channel that made it (released when it closes), so a connection
/// counts from its accepted handshake to its last byte, leaving connections included.
struct AdmissionState: Sendable {
    /// The caps; `Int.max` turns one off.
    struct Limits: Sendable, Equatable {
        var connections: Int
        var connectionsPerUser: Int
        var connectionsPerAddress: Int
    }

    /// The answer to ``admit(user:address:)``.
    enum Decision: Sendable, Equatable {
        case admitted
        /// The gateway holds `Limits.connections` already: HTTP 503.
        case gatewayFull
        /// The user holds `Limits.connectionsPerUser` already: HTTP 429.
        case userLimit
        /// The client address holds `Limits.connectionsPerAddress` already: HTTP 429.
        case addressLimit
    }

    let limits: Limits
    private(set) var total = 0
    private var perUser: [UserID: Int] = [:]
    private var perAddress: [String: Int] = [:]

    init(limits: Limits) {
        self.limits = limits
    }

    /// Whether the next handshake would be refused for lack of room on this gateway.
    var isFull: Bool { total >= limits.connections }

    /// Reserves a connection for `user` from `address` if every cap allows it.
    mutating func admit(user: UserID, address: String?) -> Decision {
        if total >= limits.connections { return .gatewayFull }
        if perUser[user, default: 0] >= limits.connectionsPerUser { return .userLimit }
        if let address, perAddress[address, default: 0] >= limits.connectionsPerAddress { return .addressLimit }
        total += 1
        perUser[user, default: 0] += 1
        if let address { perAddress[address, default: 0] += 1 }
        return .admitted
    }

    /// Gives back a reservation that ``admit(user:address:)`` made.
    mutating func release(user: UserID, address: String?) {
        total = max(0, total - 1)
        Self.decrement(user, in: &perUser)
        if let address { Self.decrement(address, in: &perAddress) }
    }

    func connections(of user: UserID) -> Int { perUser[user] ?? 0 }

    private static func decrement<Key: Hashable>(_ key: Key, in counts: inout [Key: Int]) {
        guard let count = counts[key] else { return }
        counts[key] = count <= 1 ? nil : count - 1
    }
}

/// ``AdmissionState`` behind a lock, shared by every event loop of a gateway.
final class ConnectionAdmission: Sendable {
    private let state: Mutex<AdmissionState>

    init(limits: AdmissionState.Limits) {
        state = Mutex(AdmissionState(limits: limits))
    }

    func admit(user: UserID, address: String?) -> AdmissionState.Decision {
        state.withLock { $0.admit(user: user, address: address) }
    }

    func release(user: UserID, address: String?) {
        state.withLock { $0.release(user: user, address: address) }
    }

    var isFull: Bool { state.withLock { $0.isFull } }

    var total: Int { state.withLock { $0.total } }
}
