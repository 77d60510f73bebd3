package polydet.storeguard;

import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.security.ProtectionDomain;

/**
 * A Java agent (-javaagent in config.properties' vmargs) that replaces TorchServe's
 * org.pytorch.serve.archive.s3.HttpUtils with polydet's store guard as the class is first loaded.
 * The replacement's bytes travel in this jar under a name no class loader looks up, so the guard
 * is in force only when the agent is. A missing replacement stops the JVM at start (fail closed).
 */
public final class Agent {

    static final String TARGET = "org/pytorch/serve/archive/s3/HttpUtils";
    static final String RESOURCE = "/polydet/storeguard/HttpUtils.class.bin";

    private Agent() {}

    public static void premain(String args, Instrumentation inst) throws IOException {
        final byte[] guard;
        try (InputStream in = Agent.class.getResourceAsStream(RESOURCE)) {
            if (in == null) {
                throw new IOException("polydet store guard: " + RESOURCE + " missing from the agent jar");
            }
            guard = in.readAllBytes();
        }
        inst.addTransformer(
                new ClassFileTransformer() {
                    @Override
                    public byte[] transform(
                            ClassLoader loader,
                            String name,
                            Class<?> redefined,
                            ProtectionDomain domain,
                            byte[] original) {
                        return TARGET.equals(name) ? guard.clone() : null;
                    }
                });
        System.err.println("polydet store guard: active (model registration limited to the store's .mar files)");
    }
}
