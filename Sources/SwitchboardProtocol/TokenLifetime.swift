/// Turns a token's `exp` claim, any JSON number, into a timer the gateway can schedule.
///
/// A claim is a `Double` of seconds since 1970 and can be anything JSON allows: 1e16,
/// 1e300, negative, fractional. Converting such a value straight into nanoseconds traps,
/// which once let one signed token take a whole gateway down. Every conversion here is
/// range-checked first, and a far-away expiry is clamped: the session re-arms the timer
/// when it fires early.
public enum TokenLifetime {
    /// The longest single expiry timer; an `exp` further away re-arms when this passes.
    public static let longestTimer: Duration = .seconds(7 * 24 * 3600)

    /// What the gateway does about an expiry, seen from `now`.
    public enum Decision: Sendable, Equatable {
        /// The token has expired (or the claim is not a usable number): close now.
        case expired
        /// Check again after this long (at most ``longestTimer``).
        case checkAfter(Duration)
    }

    /// - Parameters:
    ///   - expiresAt: The `exp` claim, in seconds since 1970.
    ///   - now: The current time, in seconds since 1970.
    public static func decide(expiresAt: Double, now: Double) -> Decision {
        guard expiresAt.isFinite, now.isFinite else { return .expired }
        let remaining = expiresAt - now
        guard remaining.isFinite, remaining > 0 else { return .expired }
        let longest = Double(longestTimer.components.seconds)
        if remaining >= longest { return .checkAfter(longestTimer) }
        // Below a week, so the product fits an Int64 of milliseconds with room to spare.
        return .checkAfter(.milliseconds(Int64((remaining * 1000).rounded(.up))))
    }
}
