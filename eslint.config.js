// typescript-eslint with type information: floating promises are errors (an unawaited promise
// is a lost error or a lost write). Generated code is not linted.
import tseslint from "typescript-eslint";

export default tseslint.config(
  {
    ignores: [
      "api/gen/**",
      "pkg/compute/containerd/gen/**",
      "dist/**",
      "node_modules/**",
      "coverage/**",
      "**/*.js",
      "**/*.mjs",
      "vite.config.ts",
    ],
  },
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { project: "./tsconfig.json", tsconfigRootDir: import.meta.dirname } },
    rules: {
      "@typescript-eslint/no-floating-promises": [
        "error",
        // node:test's describe/it return promises the runner itself tracks.
        { allowForKnownSafeCalls: [{ from: "package", name: ["describe", "it", "test", "suite"], package: "node:test" }] },
      ],
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: { arguments: false } }],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/require-await": "off",
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/only-throw-error": "error",
    },
  },
  {
    // The browser side has its own tsconfig (DOM, bundler resolution); .vue files are checked by vue-tsc.
    files: ["control_and_manage_plane/**/*.ts", "pkg/virtual-apps-and-desktop/**/*.ts"],
    languageOptions: { parserOptions: { project: "./tsconfig.ui.json", tsconfigRootDir: import.meta.dirname } },
  },
);
