/// Full-jitter exponential backoff between reconnect attempts, computed exactly as the
/// JavaScript client does (docs/clients.md): retry *n* (0 for the first after a close)
/// waits a uniformly random time in [0, min(``maximum``, ``minimum`` · 2ⁿ)).
///
/// Jitter spreads the clients of a stopped or draining gateway over time instead of
/// bringing them all back at once.
public struct ReconnectBackoff: Sendable, Hashable {
    /// The ceiling of the first retry's delay (the backoff base).
    public var minimum: Duration
    /// The largest ceiling any retry's delay can have.
    public var maximum: Duration

    /// - Parameters:
    ///   - minimum: The backoff base; 0.5 s by default, like the JavaScript client.
    ///   - maximum: The backoff cap; 30 s by default.
    public init(minimum: Duration = .milliseconds(500), maximum: Duration = .seconds(30)) {
        self.minimum = minimum
        self.maximum = maximum
    }

    /// The upper bound of the delay before retry `retry`: min(maximum, minimum · 2^retry).
    /// - Parameter retry: 0 for the first retry after a close, 1 for the second, …
    public func ceiling(forRetry retry: Int) -> Duration {
        // 2^62 seconds is past any cap; clamping the exponent keeps the product finite.
        let doubling = Double(sign: .plus, exponent: min(max(retry, 0), 62), significand: 1)
        return .seconds(min(maximum.inSeconds, minimum.inSeconds * doubling))
    }

    /// The delay before retry `retry`.
    /// - Parameters:
    ///   - retry: 0 for the first retry after a close, 1 for the second, …
    ///   - unitRandom: A uniform random number in [0, 1); values outside are clamped into it.
    public func delay(forRetry retry: Int, unitRandom: Double) -> Duration {
        let fraction = unitRandom.isFinite ? min(max(unitRandom, 0), (1.0).nextDown) : 0
        return .seconds(ceiling(forRetry: retry).inSeconds * fraction)
    }
}

extension Duration {
    /// The duration as a (possibly fractional) number of seconds.
    var inSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
