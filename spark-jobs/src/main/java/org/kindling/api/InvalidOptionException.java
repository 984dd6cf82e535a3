package org.kindling.api;

/**
 * A builder was given a bad or missing option: the message names the option and why. The CLI turns
 * it into a usage error (exit code 2).
 */
public final class InvalidOptionException extends IllegalArgumentException {
    private final String option;
    private final String reason;

    public InvalidOptionException(String option, String reason) {
        super(option + ": " + reason);
        this.option = option;
        this.reason = reason;
    }

    /** What is wrong, without the option's name in front (the CLI's messages name its flags). */
    public String reason() {
        return reason;
    }

    /** The option at fault, as the builder's method names it (e.g. {@code maxNewTokens}). */
    public String option() {
        return option;
    }

    /**
     * {@code e} as an option error: the option is the first {@code --flag} its message names (the
     * lower layers name the CLI's flags), in the API's camel case ({@code --max-len} → {@code maxLen}),
     * else {@code fallback}.
     */
    public static InvalidOptionException of(IllegalArgumentException e, String fallback) {
        if (e instanceof InvalidOptionException o) {
            return o;
        }
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("--([a-z][a-z-]*)").matcher(String.valueOf(e.getMessage()));
        String option = fallback;
        if (m.find()) {
            StringBuilder sb = new StringBuilder();
            boolean up = false;
            for (char c : m.group(1).toCharArray()) {
                if (c == '-') {
                    up = true;
                } else {
                    sb.append(up ? Character.toUpperCase(c) : c);
                    up = false;
                }
            }
            option = sb.toString();
        }
        InvalidOptionException o = new InvalidOptionException(option, e.getMessage());
        o.initCause(e);
        return o;
    }
}
