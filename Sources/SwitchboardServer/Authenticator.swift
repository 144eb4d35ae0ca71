import NIOHTTP1
import SwitchboardProtocol

/// How the gateway learns a connection's user id during the WebSocket handshake.
public enum AuthenticationMode: Sendable, Equatable {
    /// Development only: the user id is taken from `?user=` with no proof.
    case none
}

/// Why a handshake was refused; every case is an HTTP 401.
public struct AuthenticationFailure: Error, Sendable, Equatable {
    /// Safe to send to the client and to log: never contains a credential.
    public var reason: String
}

/// Turns a handshake request into a user id, or a failure that becomes HTTP 401.
///
/// Runs on the connection's event loop inside the upgrade, so it must not block.
struct Authenticator: Sendable {
    let mode: AuthenticationMode

    func authenticate(_ head: HTTPRequestHead) -> Result<UserID, AuthenticationFailure> {
        switch mode {
        case .none:
            let query = QueryString(uri: head.uri)
            guard let user = query.value(for: "user") else {
                return .failure(AuthenticationFailure(reason: "missing ?user= (the gateway runs with --auth none)"))
            }
            do {
                return .success(try UserID(validating: user))
            } catch {
                return .failure(AuthenticationFailure(reason: "invalid user id: \(error.explanation)"))
            }
        }
    }
}

/// The path and decoded query parameters of a request URI.
struct QueryString {
    let path: Substring
    private let pairs: [(String, String)]

    init(uri: String) {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        path = parts.first ?? ""
        guard parts.count == 2 else {
            pairs = []
            return
        }
        pairs = parts[1].split(separator: "&").map { pair in
            let keyValue = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = Self.percentDecode(keyValue[0])
            let value = keyValue.count > 1 ? Self.percentDecode(keyValue[1]) : ""
            return (key, value)
        }
    }

    func value(for key: String) -> String? {
        pairs.first { $0.0 == key }?.1
    }

    /// Decodes `%XX` and `+`; malformed escapes are kept as written.
    static func percentDecode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), iterator.count >= 2,
                let high = hexValue(iterator[iterator.startIndex]),
                let low = hexValue(iterator[iterator.startIndex + 1])
            {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
