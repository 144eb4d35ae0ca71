import SwitchboardProtocol
import Testing

@testable import SwitchboardClient

/// The client's gateway error codes come from the server's one table, `ErrorCode`.
@Suite("SwitchboardClientError.Code and the wire error table")
struct ErrorCodeTableTests {
    /// The client constant for each wire code. The switch is exhaustive: a case added to
    /// `ErrorCode` does not compile here until the client has a constant for it.
    static func constant(for code: ErrorCode) -> SwitchboardClientError.Code {
        switch code {
        case .invalidMessage: .invalidMessage
        case .unknownType: .unknownType
        case .invalidID: .invalidID
        case .tooLarge: .tooLarge
        case .rateLimited: .rateLimited
        case .forbidden: .forbidden
        case .notMember: .notMember
        case .recipientOffline: .recipientOffline
        case .backplaneUnavailable: .backplaneUnavailable
        case .internal: .internal
        case .historyDisabled: .historyDisabled
        case .alreadyResumed: .alreadyResumed
        case .historyUnavailable: .historyUnavailable
        case .presenceDisabled: .presenceDisabled
        case .presenceUnavailable: .presenceUnavailable
        }
    }

    @Test("every ErrorCode case has a Code constant with the same wire string", arguments: ErrorCode.allCases)
    func everyWireCode(_ code: ErrorCode) {
        #expect(Self.constant(for: code).rawValue == code.rawValue)
        #expect(Self.constant(for: code) == SwitchboardClientError.Code(code))
    }

    @Test("the constants are distinct, and the client's own codes are not wire codes")
    func distinct() {
        let wire = ErrorCode.allCases.map(Self.constant(for:))
        #expect(Set(wire).count == ErrorCode.allCases.count)
        let own: [SwitchboardClientError.Code] = [.notConnected, .timeout, .connectionClosed, .tokenUnavailable, .connectFailed, .cancelled]
        #expect(own.allSatisfy { ErrorCode(rawValue: $0.rawValue) == nil })
    }

    @Test("a code the client does not know still reads")
    func openSet() {
        let code = SwitchboardClientError.Code(rawValue: "from_a_newer_gateway")
        #expect(code.rawValue == "from_a_newer_gateway")
        #expect(code != .internal)
    }
}
