package org.pytorch.serve.archive.s3;

import java.io.File;
import java.io.IOException;
import java.io.UnsupportedEncodingException;
import java.net.HttpURLConnection;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import org.pytorch.serve.archive.utils.InvalidArchiveURLException;

/**
 * polydet's store guard: stands in for TorchServe 0.12.0's class of the same name (the agent in
 * polydet.storeguard swaps it in as the frontend loads it). Every model and workflow registration,
 * REST, gRPC or load_models at start, passes through copyURLToFile before TorchServe looks at the
 * URL in any other way, so refusing here covers the paths that TorchServe's own allowed_urls check
 * skips: a URL that names a directory anywhere on disk is loaded as an exploded model (its handler
 * then runs in a worker), and a name in the store may be a symbolic link to anywhere.
 *
 * <p>What passes: the bare file name of a regular file (not a link, not a directory) directly in
 * the model store, ending in .mar. Nothing is ever downloaded, whatever allowed_urls says.
 */
public final class HttpUtils {

    private static final Pattern STORE_NAME =
            Pattern.compile("[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\\.mar");

    /** Bad values are quoted, but never whole: an error body must stay small. */
    private static final int QUOTE = 80;

    private HttpUtils() {}

    public static boolean copyURLToFile(
            List<String> allowedUrls,
            String url,
            File location,
            boolean s3SseKmsEnabled,
            String archiveName)
            throws IOException, InvalidArchiveURLException {
        if (url == null || !STORE_NAME.matcher(url).matches() || url.contains("..")) {
            throw refuse(
                    "only the file name of a .mar archive in the model store can be registered"
                            + " (no path, URL or directory): "
                            + quote(url));
        }
        Path path = location.toPath();
        if (!url.equals(String.valueOf(path.getFileName()))) {
            throw refuse("archive name and store entry disagree: " + quote(url));
        }
        if (!Files.isRegularFile(path, LinkOption.NOFOLLOW_LINKS)) {
            throw refuse(
                    quote(url)
                            + " is not a regular file in the model store"
                            + " (directories and symbolic links are refused)");
        }
        Path store = path.toAbsolutePath().getParent().toRealPath();
        if (!store.equals(path.toRealPath().getParent())) {
            throw refuse(quote(url) + " resolves outside the model store");
        }
        return false; // nothing downloaded: the archive is already in the store
    }

    public static void setHttpConnection(
            HttpURLConnection conn, String method, Map<String, String> headers)
            throws IOException {
        throw new IOException("polydet store guard: TorchServe downloads nothing");
    }

    public static String urlEncode(String url, boolean keepPathSlash)
            throws UnsupportedEncodingException {
        throw new UnsupportedEncodingException("polydet store guard: TorchServe downloads nothing");
    }

    private static InvalidArchiveURLException refuse(String why) {
        return new InvalidArchiveURLException("polydet store guard: " + why);
    }

    private static String quote(String value) {
        if (value == null) {
            return "(none)";
        }
        String v = value.length() > QUOTE ? value.substring(0, QUOTE) + "..." : value;
        return "'" + v + "'";
    }
}
