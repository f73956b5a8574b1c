// .vue files as modules for plain tsc and eslint (vue-tsc reads them itself).
declare module "*.vue" {
  import type { DefineComponent } from "vue";
  const component: DefineComponent<object, object, unknown>;
  export default component;
}
